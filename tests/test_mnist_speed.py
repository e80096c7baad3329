"""The README's main command, in its quick mode: benchmarks/mnist_speed.py runs
end to end on both fastnn backends and reports sane figures."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_prints_table_and_writes_json(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "mnist_speed.py"), "--quick",
         "--backends", "numba,numpy", "--json", str(out), "--png", ""],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ratio" in proc.stdout and "numba" in proc.stdout
    results = {r["backend"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"numba", "numpy"}
    for r in results.values():
        assert r["n_train"] == 4096 and r["epochs"] == 2
        assert r["steady_epoch_s"] > 0 and r["floor_epoch_s"] > 0
        assert 0.1 < r["test_accuracy"] <= 1.0  # better than chance (10 classes) or synthetic
    # Same seed, same data, same masks: both backends learn the same model.
    assert abs(results["numba"]["test_accuracy"] - results["numpy"]["test_accuracy"]) < 0.02


def test_help_lists_the_options():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mnist_speed.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for option in ("--epochs", "--batch-size", "--backends", "--data-dir", "--quick"):
        assert option in proc.stdout
