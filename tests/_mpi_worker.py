"""Run by tests/test_distributed.py under ``mpiexec -n K`` (or alone):
``python _mpi_worker.py MODE OUT_DIR``.

MODE ``fit``: a model with Dropout and BatchNorm trained for one epoch with
``comm=MPI.COMM_WORLD`` (``fit-nocomm``: without comm); every rank writes
its parameters and history to OUT_DIR/rank<r>.npz. ``fail``: rank 1 raises
in the middle of training. ``mismatch``: rank 1 builds a different model
(each rank prints the refusal); ``smallbatch``: a last batch of 1 row on 2
ranks, refused. ``syncbn``: SyncBatchNorm against BatchNorm.
"""

import os
import sys

import numpy as np

import fastnn
from fastnn import nn, optim

fastnn.set_num_threads(1)
if "SHARED_MEMORY_RANKS" in os.environ:  # 0: the Allreduce path
    from fastnn.distributed import GradientAverager

    GradientAverager.shared_memory_ranks = int(os.environ["SHARED_MEMORY_RANKS"])


def build(rank, mode):
    # Different initial weights per rank: fit must take rank 0's.
    fastnn.manual_seed(100 + rank)
    hidden = 24 if mode == "mismatch" and rank == 1 else 32
    return nn.Sequential([
        nn.Linear(20, hidden), nn.ReLU(), nn.Dropout(0.3), nn.BatchNorm(hidden),
        nn.Linear(hidden, 16), nn.Tanh(), nn.Dropout(0.2),
        nn.Linear(16, 5),
    ])


def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 20)).astype(np.float32)
    y = (X[:, :5].argmax(axis=1) + (X[:, 5] > 1)) % 5
    return X[:500], y[:500], X[500:], y[500:]


class _FailingLoss(nn.SoftmaxCrossEntropy):
    calls = 0

    def forward(self, logits, y, training=None):
        _FailingLoss.calls += 1
        if _FailingLoss.calls == 3:
            raise RuntimeError("deliberate failure on rank 1 at step 3")
        return super().forward(logits, y, training)


def check_sync_batchnorm(comm):
    """SyncBatchNorm on this rank's rows against BatchNorm on the whole batch."""
    from fastnn.distributed import SyncBatchNorm, share

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((11, 6)) * 3 + 2).astype(np.float64)
    dy = rng.standard_normal((11, 6))
    whole, part = nn.BatchNorm(6, dtype=np.float64), nn.BatchNorm(6, dtype=np.float64)
    for bn in (whole, part):
        bn.gamma[...] = np.linspace(0.5, 1.5, 6)
        bn.running_mean[...] = 1.0
    y = whole.forward(x, training=True)
    dx = whole.backward(dy / len(x))  # the gradient of a mean loss over the batch
    a, b = share(0, len(x), comm.Get_rank(), comm.Get_size())
    part.sync = SyncBatchNorm(comm)
    y_part = part.forward(x[a:b], training=True)
    dx_part = part.backward(dy[a:b] / (b - a))  # a mean over this rank's rows
    np.testing.assert_allclose(y_part, y[a:b], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(part.running_mean, whole.running_mean, rtol=1e-12)
    np.testing.assert_allclose(part.running_var, whole.running_var, rtol=1e-12)
    # dx comes back per this rank's mean loss: scale by its share to compare
    np.testing.assert_allclose(dx_part * (b - a) / len(x), dx[a:b], rtol=1e-9, atol=1e-12)
    from mpi4py import MPI

    for mine, ref in ((part.gamma.grad, whole.gamma.grad), (part.beta.grad, whole.beta.grad)):
        total = mine * (b - a) / len(x)  # the weighting of the gradient all-reduce
        comm.Allreduce(MPI.IN_PLACE, total)
        np.testing.assert_allclose(total, ref, rtol=1e-9, atol=1e-12)


def main():
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "syncbn":
        from mpi4py import MPI

        check_sync_batchnorm(MPI.COMM_WORLD)
        print(f"rank {MPI.COMM_WORLD.Get_rank()} syncbn ok", flush=True)
        return
    comm = None
    rank = 0
    if mode != "fit-nocomm":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        rank = comm.Get_rank()
    model = build(rank, mode)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    X, y, Xv, yv = data()
    if comm is not None:  # each rank reads only its rows of a memory-mapped file
        if rank == 0:
            np.save(f"{out}/X.npy", X)
        comm.Barrier()
        X = np.load(f"{out}/X.npy", mmap_mode="r")
    loss_fn = _FailingLoss() if mode == "fail" and rank == 1 else nn.SoftmaxCrossEntropy()
    if mode in ("mismatch", "smallbatch"):
        n = 401 if mode == "smallbatch" else len(X)  # batch_size 100: a last batch of 1 row
        try:
            fastnn.fit(model, loss_fn, opt, X[:n], y[:n], epochs=1, batch_size=100, seed=3, progress=False,
                       comm=comm)
        except ValueError as exc:
            sys.stdout.write(f"rank {rank} refused: {exc}\n")
            sys.stdout.flush()
            return
        raise AssertionError(f"{mode}: not refused")
    hist = fastnn.fit(model, loss_fn, opt, X, y, epochs=int(os.environ.get("EPOCHS", 1)), batch_size=64, seed=3,
                      validation_data=(Xv, yv), progress=False, comm=comm)
    state = {"param/" + k: v for k, v in model.state_dict().items()}
    np.savez(f"{out}/rank{rank}.npz", loss=np.array(hist.loss), val_loss=np.array(hist.val_loss),
             val_accuracy=np.array(hist.val_accuracy), **state)
    if comm is not None:
        fastnn.save(f"{out}/ckpt.npz", model, opt, comm=comm, epoch=2)
        fresh = build(rank, mode)
        fastnn.load(f"{out}/ckpt.npz", fresh, optim.Adam(fresh.parameters(), lr=1e-2))
        for (k, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
            assert np.array_equal(a, b), k
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main()
