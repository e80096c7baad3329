"""benchmarks/vs_torch.py at toy sizes: both workers run, the table and the
JSON hold every (op, shape, dtype), and a missing PyTorch is a skip, not an error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _helpers import assert_script_says_no_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "vs_torch.py")


def test_toy_run_writes_every_row(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "vs_torch.json"
    ops = ["linear", "relu", "gelu", "softmax_xent", "softmax_xent_soft", "mse", "batchnorm", "layernorm", "dropout",
           "sgd_momentum", "adam_decayed"]
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--ops", ",".join(ops), "--sizes", "16x8,32x16", "--dtypes", "float32,float64",
         "--repeats", "2", "--warmup", "1", "--rounds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "ratio" in proc.stdout and "copy GB/s" in proc.stdout
    doc = json.loads(out.read_text())
    rows = {(r["op"], tuple(r["shape"]), r["dtype"]): r for r in doc["rows"]}
    assert len(rows) == len(ops) * 2 * 2
    for (op, shape, dtype), r in rows.items():
        assert r["fastnn_s"] > 0 and r["torch_s"] > 0
        assert r["ratio"] == pytest.approx(r["fastnn_s"] / r["torch_s"])
        if op == "linear":  # compute-bound: no bandwidth figure
            assert r["fastnn_gb_s"] is None
        else:
            itemsize = 4 if dtype == "float32" else 8
            assert r["bytes"] >= 2 * shape[0] * shape[1] * itemsize
            assert r["fastnn_gb_s"] == pytest.approx(r["bytes"] / r["fastnn_s"] / 1e9)
            assert r["copyto_gb_s"] > 0 and r["mem_copy_gb_s"] > 0
            # its working set: 2 or 3 arrays (one pair) or 4 (two pairs)
            one_pair = ("softmax_xent", "softmax_xent_soft", "mse", "sgd_momentum")
            assert r["mem_copy_pairs"] == (1 if op in one_pair else 2)
            assert r["fastnn_of_mem_copy"] == pytest.approx(r["fastnn_gb_s"] / r["mem_copy_gb_s"])
            lo, hi = r["of_copy_rounds"]
            assert 0 < lo <= hi
    workers = doc["workers"]
    assert [w["framework"] for w in workers] == ["fastnn", "torch", "fastnn", "torch"]
    for w in workers:  # each framework alone in its process
        assert not (w["imported_torch"] if w["framework"] == "fastnn" else w["imported_fastnn"])
        assert all(len(r["times"]) == 2 for r in w["rows"])
    copies = [r for r in workers[0]["rows"] if r["op"].startswith("copy")]
    assert {(r["op"].split("/")[0], r["pairs"]) for r in copies if r["op"].endswith("/relu")} == {
        ("copyto", 1), ("copymem", 2)}


def vs_torch_module():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import vs_torch
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    return vs_torch


def test_the_copy_baseline_cycles_through_its_pairs():
    vs_torch = vs_torch_module()
    assert set(vs_torch.FOOTPRINT) == set(vs_torch.PASSES)
    assert all(2 <= vs_torch.FOOTPRINT[op] <= vs_torch.PASSES[op] for op in vs_torch.PASSES)
    pairs = [(np.full(5, k, np.float32), np.zeros(5, np.float32)) for k in (1, 2, 3)]
    copy = vs_torch.cycling_copy(pairs[:2])
    copy()
    assert pairs[0][1].tolist() == [1] * 5 and pairs[1][1].tolist() == [0] * 5
    copy()
    copy()
    assert pairs[1][1].tolist() == [2] * 5 and pairs[2][1].tolist() == [0] * 5


def test_without_torch_it_says_so_and_exits_0(tmp_path):
    assert_script_says_no_torch(SCRIPT, tmp_path)


@pytest.mark.parametrize("args, word", [(["--ops", "relu,conv2d"], "conv2d"), (["--sizes", "64"], "--sizes"),
                                        (["--dtypes", "float16"], "float16"), (["--repeats", "0"], "repeats")])
def test_bad_arguments_are_argparse_errors(args, word):
    proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and word in proc.stderr, proc.stderr
