"""Data-parallel fit over MPI (fastnn.distributed): ``mpiexec -n K`` runs of
tests/_mpi_worker.py on this machine against a run without MPI. Skipped
without mpi4py or mpiexec. Every launch has a timeout, so a hang fails."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fastnn import nn
from fastnn.distributed import _first_difference, describe, share

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_mpi_worker.py")
ROOT = os.path.dirname(HERE)


def _mpiexec():
    pytest.importorskip("mpi4py")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpiexec not found (pip install 'fastnn[mpi]')")
    return exe


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # one thread per rank; processes started locally, never through ssh
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               HYDRA_LAUNCHER="fork")
    return env


def _run(ranks, mode, out, timeout=300, **env):
    cmd = [sys.executable, WORKER, mode, str(out)]
    if ranks is not None:
        cmd = [_mpiexec(), "-n", str(ranks)] + cmd
    try:
        return subprocess.run(cmd, env={**_env(), **env}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s (a hang?):\n{exc.stdout}\n{exc.stderr}")


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _params(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _flat(d):
    return np.concatenate([v.ravel().astype(np.float64) for k, v in sorted(d.items())
                           if k.startswith("param/") and v.dtype.kind == "f"])


@pytest.fixture(scope="module")
def no_comm(tmp_path_factory):
    _mpiexec()
    out = tmp_path_factory.mktemp("nocomm")
    _ok(_run(None, "fit-nocomm", out, timeout=1200))  # also fills the kernel cache for the ranks
    return _params(out / "rank0.npz")


def test_share_splits_contiguously_and_evenly():
    for n, size in ((64, 2), (65, 3), (7, 7), (500, 4)):
        parts = [share(10, 10 + n, r, size) for r in range(size)]
        assert parts[0][0] == 10 and parts[-1][1] == 10 + n
        assert all(parts[r][1] == parts[r + 1][0] for r in range(size - 1))
        sizes = [b - a for a, b in parts]
        assert max(sizes) - min(sizes) <= 1


def test_describe_names_the_first_difference():
    a = nn.Sequential([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)])
    b = nn.Sequential([nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)])
    c = nn.Sequential([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2, bias=False)])
    d = nn.Sequential([nn.Linear(4, 8, dtype=np.float64), nn.ReLU(), nn.Linear(8, 2)])
    assert _first_difference(describe(a), describe(a)) is None
    assert "model[1]" in _first_difference(describe(b), describe(a))
    assert "ReLU" in _first_difference(describe(b), describe(a))
    assert "model[2].b" in _first_difference(describe(c), describe(a))
    assert "float64" in _first_difference(describe(d), describe(a))


@pytest.mark.parametrize("ranks,path", [(2, "shared-memory"), (3, "shared-memory"), (2, "allreduce")])
def test_ranks_match_one_process_and_each_other(ranks, path, no_comm, tmp_path):
    """Dropout and BatchNorm included; 3 ranks get unequal shares of the
    batches; both ways of summing the gradients."""
    env = {"SHARED_MEMORY_RANKS": "0"} if path == "allreduce" else {}
    _ok(_run(ranks, "fit", tmp_path, **env))  # the worker also saves on rank 0 and loads on every rank
    got = [_params(tmp_path / f"rank{r}.npz") for r in range(ranks)]
    for r in range(1, ranks):
        for k in got[0]:
            np.testing.assert_array_equal(got[r][k], got[0][k], err_msg=f"rank {r} {k}")
    ref, mine = _flat(no_comm), _flat(got[0])
    rel = np.linalg.norm(mine - ref) / np.linalg.norm(ref)
    assert rel < 1e-5, rel  # 4e-8 measured; the goal is 1e-3
    for k in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(got[0][k], no_comm[k], rtol=1e-5, err_msg=k)


def test_single_rank_is_the_same_as_no_comm(no_comm, tmp_path):
    _ok(_run(1, "fit", tmp_path))
    got = _params(tmp_path / "rank0.npz")
    assert sorted(got) == sorted(no_comm)
    for k in got:
        np.testing.assert_array_equal(got[k], no_comm[k], err_msg=k)


def test_sync_batchnorm_matches_batchnorm_on_the_whole_batch(no_comm, tmp_path):
    proc = _ok(_run(2, "syncbn", tmp_path))
    assert proc.stdout.count("syncbn ok") == 2


def test_a_failing_rank_ends_the_job_with_its_error(no_comm, tmp_path):
    proc = _run(2, "fail", tmp_path, timeout=120)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "deliberate failure on rank 1 at step 3" in text
    assert "Traceback" in text
    assert not (tmp_path / "rank0.npz").exists()


def test_mismatched_models_are_refused_on_every_rank(no_comm, tmp_path):
    proc = _ok(_run(2, "mismatch", tmp_path, timeout=120))
    assert "rank 0 refused:" in proc.stdout and "rank 1 refused:" in proc.stdout
    why = "rank 1: model[0].W is shape (20, 32) dtype float32 on rank 0, shape (20, 24) dtype float32 on rank 1"
    assert proc.stdout.count(why) == 2, proc.stdout


def test_a_batch_smaller_than_the_ranks_is_refused_on_every_rank(no_comm, tmp_path):
    proc = _ok(_run(2, "smallbatch", tmp_path, timeout=120))
    assert proc.stdout.count("a global batch of 1 rows (batch_size=100, 401 rows) cannot give") == 2, proc.stdout
