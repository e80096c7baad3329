"""Data-parallel scaling: epoch time of ``fit(..., comm=MPI.COMM_WORLD)`` on 1, 2, ... ranks.

    python benchmarks/mpi_scaling.py                       # 1 and 2 ranks, 1 thread each
    python benchmarks/mpi_scaling.py --ranks 1,2,4,8,16    # on a machine with the cores
    python benchmarks/mpi_scaling.py --help

Each configuration runs as ``mpiexec -n K python mpi_scaling.py --worker``;
every rank uses ``--threads`` threads (numba and BLAS, default 1). The
network is the seed's (784-256 ReLU Dropout(0.2) - 128 ReLU Dropout(0.2) - 10,
Adam(lr=1e-3)); ``--batch-size`` is the global batch. A short untimed fit
first loads the compiled kernels; then ``--epochs`` epochs are timed and the
median epoch reported. The configurations are run ``--repeats`` times,
interleaved, and the median of those is printed with
``speedup = t(1) / t(K)`` and ``efficiency = speedup / K``.
``time in it`` is rank 0's time summing the gradients across ranks
(waiting for the slowest rank included). ``auto`` is the shared-memory
window up to ``GradientAverager.shared_memory_ranks`` ranks on one machine,
else MPI Allreduce; ``--allreduce`` also times Allreduce alone.

Data: Fashion-MNIST/MNIST found by ``fastnn.data`` when present, else a
synthetic MNIST-shaped set (said so in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.abspath(__file__)


def load_data(samples):
    from fastnn import data

    for kind in ("fashion", "mnist"):
        try:
            (X, y), _ = data.load_mnist(kind=kind)
            name = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}[kind]
            break
        except FileNotFoundError:
            continue
    else:
        rng = np.random.default_rng(0)
        X = rng.random((60000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60000)
        name = "synthetic"
    return np.ascontiguousarray(X[:samples], np.float32), np.asarray(y[:samples]), name


def worker(args):
    import fastnn
    from fastnn import distributed, nn, optim
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    fastnn.set_num_threads(args.threads)
    if args.path == "allreduce":
        distributed.GradientAverager.shared_memory_ranks = 0
    X, y, name = load_data(args.samples)

    def build():
        fastnn.manual_seed(0)
        model = nn.Sequential([
            nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(128, 10),
        ])
        return model, optim.Adam(model.parameters(), lr=1e-3)

    model, opt = build()
    loss_fn = nn.SoftmaxCrossEntropy()
    fastnn.fit(model, loss_fn, opt, X[:2048], y[:2048], epochs=1, batch_size=args.batch_size,
               seed=0, progress=False, comm=comm)  # loads the kernels; not timed

    spent = [0.0]
    average = distributed.GradientAverager.average

    def timed_average(self, weight):
        t = time.perf_counter()
        average(self, weight)
        spent[0] += time.perf_counter() - t

    distributed.GradientAverager.average = timed_average
    model, opt = build()
    times, comm_times = [], []
    for epoch in range(args.epochs):
        spent[0] = 0.0
        comm.Barrier()
        t0 = time.perf_counter()
        fastnn.fit(model, loss_fn, opt, X, y, epochs=epoch + 1, initial_epoch=epoch,
                   batch_size=args.batch_size, seed=0, progress=False, comm=comm)
        comm.Barrier()
        times.append(time.perf_counter() - t0)
        comm_times.append(spent[0])
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "epoch_s": statistics.median(times),
                          "allreduce_s": statistics.median(comm_times), "data": name}), flush=True)


def mpiexec():
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        raise SystemExit("mpiexec not found: pip install 'fastnn[mpi]'")
    return exe


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    p.add_argument("--threads", type=int, default=1, help="threads per rank (default 1)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (default 128)")
    p.add_argument("--samples", type=int, default=20000, help="training rows (default 20000)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs per rank count (default 2)")
    p.add_argument("--allreduce", action="store_true",
                   help="also time each rank count > 1 with the gradients summed by MPI Allreduce "
                        "instead of the shared-memory window")
    p.add_argument("--mpiexec-args", default="",
                   help="extra mpiexec arguments, e.g. '-f hosts' or '-bind-to core'")
    p.add_argument("--path", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    ranks = [int(r) for r in args.ranks.split(",")]
    configs = [(k, "auto") for k in ranks] + [(k, "allreduce") for k in ranks if k > 1 and args.allreduce]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(args.threads)
    results = {c: [] for c in configs}
    name, allreduce = None, {}
    for _ in range(args.repeats):
        for k, path in configs:
            cmd = [mpiexec(), *shlex.split(args.mpiexec_args), "-n", str(k), sys.executable, HERE,
                   "--worker", "--path", path,
                   "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                   "--samples", str(args.samples), "--epochs", str(args.epochs)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[k, path].append(r["epoch_s"])
            allreduce.setdefault((k, path), []).append(r["allreduce_s"])
            name = r["data"]
    print(f"{name}, {args.samples} rows, global batch {args.batch_size}, {args.threads} thread(s) per rank, "
          f"median of {args.repeats} interleaved runs x {args.epochs} epochs")
    base = statistics.median(results[configs[0]]) * ranks[0]
    print(f"{'ranks':>5} {'gradient sum':>13} {'epoch s':>9} {'vs 1 rank':>10} {'speedup':>8} "
          f"{'efficiency':>10} {'time in it':>17}")
    for k, path in configs:
        t = statistics.median(results[k, path])
        ar = statistics.median(allreduce[k, path])
        how = "-" if k == 1 else path if path == "allreduce" else "auto"
        print(f"{k:>5} {how:>13} {t:>9.3f} {t / base:>9.2f}x {base / t:>8.2f} {base / t / k:>10.2f} "
              f"{ar:>8.3f} s ({ar / t:4.0%})")


if __name__ == "__main__":
    main()
