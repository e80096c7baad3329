"""benchmarks/step_parts.py: its no-op product skips exactly the products, and a
tiny run reports every part (the figures are not checked: speed is measured by
the script, not asserted in tests)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn import _blas
from fastnn.kernels._blas import gemm_any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "step_parts.py")


def _script():
    spec = importlib.util.spec_from_file_location("step_parts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noop_gemm_leaves_the_output_and_the_real_one_multiplies(dtype):
    fns = _blas.functions()
    if fns is None:
        pytest.skip("no BLAS found for the compiled step")
    sgemm, dgemm, wide = fns
    keep_alive, noop = _script().noop_gemm(dtype, wide)
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((7, 3)).astype(dtype)
    C = np.full((5, 3), 7.0, dtype)
    gemm_any(noop, wide, C, A, B, False, False)
    assert np.all(C == 7.0)
    gemm_any(sgemm if dtype == np.float32 else dgemm, wide, C, A, B, False, False)
    np.testing.assert_array_equal(C, A @ B)


def test_tiny_run_reports_every_part(tmp_path):
    out = tmp_path / "parts.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--batch-sizes", "64,128", "--rounds", "2", "--steps", "3",
                           "--dataset", "synthetic", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "products in step" in proc.stdout and "in step / alone" in proc.stdout
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"64", "128"}
    for res in doc["results"].values():
        rounds = res["rounds"]
        assert len(rounds) == 2
        for r in rounds:
            assert set(r["step"]) == {"gather", "forward_backward", "loss_accuracy", "adam"}
            assert r["products_alone"] > 0 and all(v > 0 for v in r["step"].values())
            assert r["products_in_step"] == pytest.approx(
                r["step"]["forward_backward"] - r["step_without_products"]["forward_backward"])
        s = res["summary"]
        ratios = [r["products_in_step"] / r["products_alone"] for r in rounds]
        assert s["in_step_over_alone"]["median"] == pytest.approx(float(np.median(ratios)))
        assert s["in_step_over_alone"]["min"] <= s["in_step_over_alone"]["median"] <= s["in_step_over_alone"]["max"]


@pytest.mark.parametrize("args, word", [(["--batch-sizes", "0"], "--batch-sizes"), (["--rounds", "x"], "--rounds"),
                                        (["--batch-sizes", "64", "--seed", "-1"], "--seed")])
def test_bad_arguments_are_refused(args, word):
    proc = subprocess.run([sys.executable, SCRIPT, "--dataset", "synthetic", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and word in proc.stderr
