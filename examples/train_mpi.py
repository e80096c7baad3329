"""Data-parallel training on several processes with MPI.

    mpiexec -n 2 python examples/train_mpi.py --epochs 3
    mpiexec -f hosts -n 8 python examples/train_mpi.py      # several machines

Every rank runs this same script: it builds the same model (the weights of
rank 0 are broadcast, so each rank's own initialisation does not matter),
memory-maps the same training arrays (each rank reads only the rows of its
share of each batch) and calls ``fit(..., comm=MPI.COMM_WORLD)``.
``--batch-size`` is the global batch, split across the ranks; the trained
weights do not depend on the number of ranks (up to float rounding). Rank 0
prints the progress and writes the checkpoint; every rank can load it.

The seed's network with BatchNorm (synchronised across ranks) on
Fashion-MNIST (or MNIST); needs ``pip install 'fastnn[mpi]'``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from mpi4py import MPI

import fastnn
from fastnn import nn, optim
from fastnn.data import load_mnist


def build_model() -> nn.Sequential:
    return nn.Sequential([
        nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2), nn.BatchNorm(256),
        nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 10),
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="fashion", choices=["fashion", "mnist"])
    ap.add_argument("--data-dir", default=None, help="directory with the IDX files (default: search)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128, help="the global batch")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=int, default=5000, help="training images held out for validation")
    ap.add_argument("--save", default=None, help="write a checkpoint (.npz) at the end")
    args = ap.parse_args(argv)

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    # One process per core: the ranks on this machine share its cores.
    local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    fastnn.set_num_threads(max(1, (os.cpu_count() or 1) // local))

    # Rank 0 writes the training set once as .npy files; every rank maps them.
    # (On several machines, put them on a shared file system or copy them.)
    tmp = comm.bcast(tempfile.mkdtemp(prefix="fastnn-mpi-") if rank == 0 else None)
    if rank == 0:
        (X, y), _ = load_mnist(args.data_dir, kind=args.kind)
        np.save(os.path.join(tmp, "X.npy"), X.astype(np.float32))
        np.save(os.path.join(tmp, "y.npy"), y)
    comm.Barrier()
    X = np.load(os.path.join(tmp, "X.npy"), mmap_mode="r")
    y = np.load(os.path.join(tmp, "y.npy"))
    n = len(X) - args.val
    (_, _), (X_test, y_test) = load_mnist(args.data_dir, kind=args.kind)

    model = build_model()
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.SoftmaxCrossEntropy()
    history = fastnn.fit(model, loss_fn, optimizer, X[:n], y[:n], epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed,
                         validation_data=(X[n:], y[n:]), comm=comm)
    test_loss, test_acc = fastnn.evaluate(model, loss_fn, X_test, y_test)
    if rank == 0:
        print(f"{size} rank(s): final loss {history.loss[-1]:.4f}, "
              f"val_accuracy {history.val_accuracy[-1]:.4f}, test accuracy {test_acc:.4f}")
    if args.save:
        fastnn.save(args.save, model, optimizer, comm=comm, epoch=args.epochs, seed=args.seed)
    comm.Barrier()
    if rank == 0:
        for name in ("X.npy", "y.npy"):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
