"""benchmarks/latency.py runs end to end (a tiny run; the figures are not checked:
speed is measured by the script, not asserted in tests)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_run_checks_outputs_agree_and_writes_json(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    frameworks = ["fastnn", "onnxruntime"]
    try:
        import torch  # noqa: F401
        frameworks.append("torch")
    except ImportError:
        pass
    out = tmp_path / "latency.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "latency.py"), "--rounds", "2", "--calls", "3",
         "--warmup", "1", "--batches", "1,3", "--threads", "1", "--frameworks", ",".join(frameworks),
         "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["threads"] == 1 and set(results["batches"]) == {"1", "3"}
    for entry in results["batches"].values():
        for f in frameworks:
            assert entry[f]["min_us"] <= entry[f]["median_us"] <= entry[f]["max_us"]
        assert "fastnn/onnxruntime" in entry
    assert "fastnn/onnxruntime" in proc.stdout
