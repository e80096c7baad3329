"""The README's main command, in its quick mode: benchmarks/mnist_speed.py runs
end to end in clean worker processes and reports sane figures."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "mnist_speed.py")


def run(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_quick_run_prints_table_and_writes_json(tmp_path):
    out = tmp_path / "speed.json"
    # A fastnn variable set by the caller must not reach the workers.
    env = dict(os.environ, FASTNN_PARALLEL_MIN_WORK="0", OMP_WAIT_POLICY="ACTIVE")
    proc = run("--quick", "--rounds", "2", "--backends", "numba,numpy", "--json", str(out), "--png", "",
               env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ratio" in proc.stdout and "numba-fit" in proc.stdout
    assert "FASTNN_PARALLEL_MIN_WORK" in proc.stdout and "OMP_WAIT_POLICY" in proc.stdout
    doc = json.loads(out.read_text())
    results = {r["backend"]: r for r in doc["results"]}
    assert set(results) == {"floor", "numba-fit", "numba-loop", "numba-loop-dx", "numpy-fit"}
    assert {"FASTNN_PARALLEL_MIN_WORK", "OMP_WAIT_POLICY"} <= set(doc["env_removed"])
    floor = results["floor"]
    assert not floor["imported_fastnn"] and floor["test_accuracy"] is None
    for name, r in results.items():
        assert r["n_train"] == 4096 and r["rounds"] == 2 and len(r["per_round"]) == 2
        assert r["floor_epoch_s"] == floor["floor_epoch_s"] > 0
        assert r["steady_epoch_min_s"] <= r["steady_epoch_s"] <= r["steady_epoch_max_s"]
        assert abs(r["ratio_to_floor"] - r["steady_epoch_s"] / r["floor_epoch_s"]) < 1e-9
        # best: the fastest timed epoch of any round (after the first, but for the floor)
        timed = [e for run_ in r["per_round"] for e in (run_["epoch_s"] if name == "floor" else run_["epoch_s"][1:])]
        assert r["best_epoch_s"] == min(timed) <= r["steady_epoch_min_s"]
        assert r["floor_best_epoch_s"] == floor["best_epoch_s"]
        assert abs(r["best_ratio"] - r["best_epoch_s"] / floor["best_epoch_s"]) < 1e-9
        for run_ in r["per_round"]:
            assert run_["epochs"] == (3 if name == "floor" else 2)  # the floor: best of >= 3
            if name != "floor":  # the caller's ACTIVE did not reach the worker
                assert run_["omp_wait_policy"] is None
        if name != "floor":
            assert r["imported_fastnn"]
            assert r["per_round"][0]["fastnn_file"].startswith(os.path.join(ROOT, "fastnn"))
            assert 0.1 < r["test_accuracy"] <= 1.0  # better than chance (10 classes)
    assert results["numba-loop"]["first_step_s"] > 0
    # Same seed, same data, same masks: fit() learns the same model on both backends.
    assert abs(results["numba-fit"]["test_accuracy"] - results["numpy-fit"]["test_accuracy"]) < 0.02


def test_peers_never_import_fastnn_and_threads_reach_every_worker(tmp_path):
    out = tmp_path / "speed.json"
    peers = [b for b in ("torch", "jax") if importlib.util.find_spec(b)]
    proc = run("--quick", "--epochs", "1", "--threads", "1", "--backends", ",".join(["numba-loop"] + peers),
               "--json", str(out), "--png", "")
    assert proc.returncode == 0, proc.stderr
    results = {r["backend"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"floor", "numba-loop", *peers}
    for name in ["floor", *peers]:
        assert not results[name]["imported_fastnn"], name
    floor, numba = results["floor"]["per_round"][0], results["numba-loop"]["per_round"][0]
    assert [b["num_threads"] for b in floor["blas"]] == [1] * len(floor["blas"])
    assert numba["threading"]["numba_num_threads"] == 1
    assert all(b["num_threads"] == 1 for b in numba["threading"]["blas"])
    if "torch" in results:
        assert results["torch"]["per_round"][0]["torch_threads"] == 1
    if "jax" in results:
        assert "intra_op_parallelism_threads=1" in results["jax"]["per_round"][0]["xla_flags"]


def test_bad_arguments_are_argparse_errors():
    for args, word in ((["--backends", "numba,tensorflow"], "tensorflow"), (["--batch-size", "0"], "batch-size"),
                       (["--rounds", "0"], "rounds"), (["--threads", "0"], "threads")):
        proc = run(*args, timeout=120)
        assert proc.returncode == 2 and word in proc.stderr, (args, proc.stderr)
    assert "floor, numba-fit" in run("--backends", "nope", timeout=120).stderr


def test_help_lists_the_options():
    proc = run("--help", timeout=120)
    assert proc.returncode == 0
    for option in ("--epochs", "--batch-size", "--backends", "--data-dir", "--quick", "--rounds", "--threads"):
        assert option in proc.stdout


def test_unsteady_names_the_backends_whose_rounds_spread():
    spec = importlib.util.spec_from_file_location("mnist_speed", os.path.join(ROOT, "benchmarks", "mnist_speed.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = [{"backend": "floor", "rounds": 3, "steady_epoch_min_s": 0.32, "steady_epoch_max_s": 0.62},
            {"backend": "numba-fit", "rounds": 3, "steady_epoch_min_s": 0.42, "steady_epoch_max_s": 0.45},
            {"backend": "jax", "rounds": 1, "steady_epoch_min_s": 0.6, "steady_epoch_max_s": 0.6}]
    assert script.unsteady(rows) == ["floor"]
    rows[1]["steady_epoch_max_s"] = 0.51
    assert script.unsteady(rows) == ["floor", "numba-fit"]
