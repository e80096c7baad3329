"""benchmarks/thread_launch.py runs end to end (a tiny run; the figures are not
checked: speed is measured by the script, not asserted in tests)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "thread_launch.py")


def test_tiny_run_reports_each_layer_and_writes_json(tmp_path):
    out = tmp_path / "launch.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--layers", "tbb,workqueue", "--calls", "5",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    layers = [r["layer"] for r in results]
    assert "workqueue" in layers  # always present; tbb where the package loads
    for r in results:
        assert r["threads"] >= 1 and r["launch_back_to_back"] > 0
        assert set(r["relu_after_product"]) == {"65536", "262144", "1048576", "4194304"}
    assert "ReLU right after a 256x784x256 product" in proc.stdout


def test_unknown_layer_is_refused():
    proc = subprocess.run([sys.executable, SCRIPT, "--layers", "tbb,bogus"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--layers" in proc.stderr and "bogus" in proc.stderr
