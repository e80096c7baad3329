"""benchmarks/adam_trained_state.py on a small slice of real data: the three
workers train and time their steps, the peers never import fastnn, the
flushed variant holds no subnormal moments, and a missing PyTorch or data set
is a skip, not an error."""

import json
import os
import subprocess
import sys

import pytest

from _helpers import assert_script_says_no_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "adam_trained_state.py")


def test_small_run_writes_every_library(tmp_path):
    pytest.importorskip("torch")
    from fastnn.data import load_mnist

    try:
        load_mnist(kind="fashion")
    except (OSError, ValueError) as exc:
        pytest.skip(f"Fashion-MNIST not installed ({exc})")
    out = tmp_path / "adam.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--rounds", "1", "--steps", "5", "--train-rows", "640",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["data"] == {"data": "Fashion-MNIST", "rows": 640}
    rows = {r["lib"]: r for r in doc["rows"]}
    assert set(rows) == {"fastnn", "torch", "torch_flushed"}
    assert all(r["median_us"] > 0 for r in rows.values())
    assert rows["fastnn"]["ratio_to_fastnn"] == pytest.approx(1.0)
    assert rows["fastnn"]["subnormal_moments"] == 0 and rows["torch_flushed"]["subnormal_moments"] == 0
    assert doc["workers"]["fastnn"][0]["fastnn_imported"]
    assert all(not w["fastnn_imported"] and "torch" in w for lib in ("torch", "torch_flushed")
               for w in doc["workers"][lib])


def test_without_torch_says_so_and_exits_0(tmp_path):
    """The parent checks for PyTorch before starting any worker."""
    assert_script_says_no_torch(SCRIPT, tmp_path)
