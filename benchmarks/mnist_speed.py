"""Train the seed's MNIST network on each backend, in clean processes, and time it against the GEMM floor.

    python benchmarks/mnist_speed.py                  # 3 rounds: floor, fastnn, torch/jax if importable
    python benchmarks/mnist_speed.py --threads 1      # every worker with one thread
    python benchmarks/mnist_speed.py --quick          # a subset, seconds (CI)
    python benchmarks/mnist_speed.py --help

The network is the seed's: 784-256 ReLU Dropout(0.2) - 128 ReLU Dropout(0.2)
- 10, softmax cross-entropy, Adam(lr=1e-3), batch 64.

Every measurement runs in its own process, started from this process's
environment without fastnn's variables (every ``FASTNN_*``,
``OMP_WAIT_POLICY``, ``OPENBLAS_THREAD_TIMEOUT``) and without thread-count
variables (``--threads`` sets those the same way for every worker). This
process never imports fastnn; neither do the PyTorch, JAX and floor workers.
The workers run in interleaved rounds (floor, numba-fit, numba-loop,
numpy-fit, torch, jax, floor, ...), so drift of the machine's speed falls on
every backend alike.

Backends:

* ``floor``: the **GEMM floor**, the matrix products of one training epoch
  alone (3 forward, 3 weight-gradient and 2 input-gradient products per
  step) on the same shapes, through NumPy's BLAS at its defaults, in a
  process that never imports fastnn; best of at least 3 epochs.
* ``numba-fit``: ``fastnn.fit(...)``, the library's loop, one call per
  epoch, timed around the call.
* ``numba-loop``: the README's hand-written loop (``model.forward``,
  ``loss_fn.forward``, ``model.backward(..., need_input_grad=False)``,
  ``optimizer.step``).
* ``numba-loop-dx``: the same loop with ``model.backward``'s default,
  which also returns the gradient with respect to the input: one more
  matrix product per step, the size of the first layer's.
* ``numpy-fit``: ``fastnn.fit`` on the NumPy reference backend.
* ``torch``, ``jax``: the same network written plainly in each (skipped,
  and named, when not importable).

Per worker, *epoch* is the median of the epochs after the first (which
holds compiles and cache loads). Per backend the table gives the median
over rounds and the min-max; ``ratio = median epoch / median clean floor``.
*best* is the fastest epoch after the first in any round (the floor's: its
fastest epoch), and *best ratio* the one against the other: the speed when
the machine does not interfere. On a shared machine whose other tenants
stall one of its cores for seconds at a time, two-thread BLAS products wait
for it, and the median over few rounds can land on such a stretch.
*1st step* is the time from the process's start to its first trained step
(imports, model, compile or cache load; data loading excluded).

Data: MNIST or Fashion-MNIST found by ``fastnn.data`` (``--data-dir``,
``FASTNN_DATA_DIR``, the cache dir, Debian's dataset-fashion-mnist), else a
synthetic MNIST-shaped set, labelled as such. It is read once, in a process
of its own, and handed to the workers as ``.npy`` files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BACKENDS = ("floor", "numba-fit", "numba-loop", "numba-loop-dx", "numpy-fit", "torch", "jax")
ALIASES = {"numba": ("numba-fit", "numba-loop", "numba-loop-dx"), "numpy": ("numpy-fit",)}
PEERS = {"torch": "torch", "jax": "jax"}
FASTNN_WORKERS = ("numba-fit", "numba-loop", "numba-loop-dx", "numpy-fit", "numba-unmanaged")
LAYERS = (784, 256, 128, 10)
DROPOUT = 0.2
# Variables fastnn reads or has set process-wide, and thread counts, which
# --threads sets for every worker alike.
STRIPPED = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "XLA_FLAGS")


def clean_environ(threads=None):
    """(environment for a worker, names removed from this process's one)."""
    env = dict(os.environ)
    removed = sorted(k for k in env if k.startswith("FASTNN_") or k in STRIPPED)
    for k in removed:
        del env[k]
    if threads:
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[k] = str(threads)
    return env, removed


# ------------------------------------------------------------------ data


def prepare_data(args, out_dir):
    """Data worker: load through fastnn.data, write .npy files and meta.json."""
    sys.path.insert(0, ROOT)
    from fastnn import data

    kinds = ["mnist", "fashion"] if args.dataset == "auto" else [args.dataset]
    Xtr = None
    if args.dataset != "synthetic":
        for kind in kinds:
            try:
                (Xtr, ytr), (Xte, yte) = data.load_mnist(args.data_dir, kind=kind)
            except FileNotFoundError:
                continue
            name = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}[kind]
            break
        else:
            if args.dataset != "auto":
                raise SystemExit(f"no {args.dataset} data found (see fastnn.data.load_mnist)")
    if Xtr is None:
        (Xtr, ytr), (Xte, yte) = data.synthetic_mnist(seed=args.seed)
        name = "SYNTHETIC MNIST-shaped data (no MNIST/Fashion-MNIST found)"
    if args.quick:
        Xtr, ytr, Xte, yte = Xtr[:4096], ytr[:4096], Xte[:1024], yte[:1024]
        name += ", quick subset"
    for key, a in (("Xtr", Xtr), ("ytr", ytr), ("Xte", Xte), ("yte", yte)):
        np.save(os.path.join(out_dir, key + ".npy"), np.ascontiguousarray(a))
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump({"data": name}, f)


def load_prepared(data_dir, mmap_mode=None):
    arrays = [np.load(os.path.join(data_dir, k + ".npy"), mmap_mode=mmap_mode) for k in ("Xtr", "ytr", "Xte", "yte")]
    with open(os.path.join(data_dir, "meta.json")) as f:
        return (*arrays, json.load(f)["data"])


# -------------------------------------------------------------- the floor


class GemmFloor:
    """The matrix products of one training epoch, alone, on preallocated arrays."""

    def __init__(self, layers, dtype=np.float32):
        rng = np.random.default_rng(0)
        self.W = [rng.standard_normal((a, b)).astype(dtype) for a, b in zip(layers[:-1], layers[1:])]
        self.bufs = {}
        self.dtype = dtype

    def _arrays(self, n):
        if n not in self.bufs:
            rng = np.random.default_rng(1)
            acts = [rng.random((n, w.shape[0]), dtype=self.dtype) for w in self.W]
            outs = [np.empty((n, w.shape[1]), self.dtype) for w in self.W]
            grads = [rng.random((n, w.shape[1]), dtype=self.dtype) for w in self.W]
            dxs = [np.empty((n, w.shape[0]), self.dtype) for w in self.W]
            dWs = [np.empty_like(w) for w in self.W]
            self.bufs[n] = (acts, outs, grads, dxs, dWs)
        return self.bufs[n]

    def step(self, n):
        acts, outs, grads, dxs, dWs = self._arrays(n)
        W = self.W
        for k in range(len(W)):
            np.matmul(acts[k], W[k], out=outs[k])
        for k in range(len(W) - 1, -1, -1):
            np.matmul(acts[k].T, grads[k], out=dWs[k])
            if k > 0:
                np.matmul(grads[k], W[k].T, out=dxs[k])

    def epoch(self, sizes):
        t = time.perf_counter()
        for n in sizes:
            self.step(n)
        return time.perf_counter() - t


def run_floor(args, n):
    info = {}
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads, user_api="blas")
    info["blas"] = blas_info()
    bs = args.batch_size
    sizes = [min(bs, n - i) for i in range(0, n, bs)]
    floor = GemmFloor(LAYERS)
    floor.step(bs)  # warm-up: buffers, BLAS threads
    epochs = [floor.epoch(sizes) for _ in range(max(3, args.epochs))]
    return {"epoch_s": epochs, "floor_epoch_s": min(epochs), "steady_epoch_s": min(epochs),
            "first_epoch_s": epochs[0], "test_accuracy": None, **info}


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{k: d.get(k) for k in ("internal_api", "num_threads", "version", "architecture")}
            for d in threadpool_info() if d.get("user_api") == "blas"]


# ---------------------------------------------------------------- backends


def make_fastnn(backend, args):
    if os.path.exists(os.path.join(ROOT, "fastnn", "__init__.py")):
        sys.path.insert(0, ROOT)  # the checkout this script belongs to
    import fastnn
    from fastnn import nn, optim

    if args.threads:
        fastnn.set_num_threads(args.threads)
    impl = "numpy" if backend == "numpy-fit" else "numba"
    fastnn.manual_seed(args.seed)
    model = nn.Sequential([
        nn.Linear(784, 256), nn.ReLU(), nn.Dropout(DROPOUT),
        nn.Linear(256, 128), nn.ReLU(), nn.Dropout(DROPOUT),
        nn.Linear(128, 10),
    ], backend=impl)
    loss_fn = nn.SoftmaxCrossEntropy()
    loss_fn.backend = impl
    opt = optim.Adam(model.parameters(), lr=1e-3, backend=impl)

    input_grad = backend == "numba-loop-dx"

    def train_step(xb, yb):  # the README's loop, as a user writes it
        out = model.forward(xb)
        loss = loss_fn.forward(out, yb)
        model.backward(loss_fn.backward(), need_input_grad=input_grad)
        opt.step()
        return loss

    def fit_epoch(X, y, epoch):
        fastnn.fit(model, loss_fn, opt, X, y, epochs=epoch + 1, initial_epoch=epoch,
                   batch_size=args.batch_size, seed=args.seed, progress=False)

    def predict(X):
        return fastnn.predict(model, X).argmax(1)

    info = {"fastnn_file": fastnn.__file__, "threading": fastnn.threading_info(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    return train_step, fit_epoch, predict, info


def make_torch(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Dropout(DROPOUT),
        torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Dropout(DROPOUT),
        torch.nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return loss.detach()

    def predict(X):
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(X)).numpy()
        model.train()
        return out.argmax(1)

    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    return train_step, None, predict, info


def make_jax(args):
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(args.seed)
    params = []
    for fan_in, fan_out in zip(LAYERS[:-1], LAYERS[1:]):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (fan_in, fan_out), jnp.float32) * np.sqrt(2 / fan_in),
                       jnp.zeros(fan_out, jnp.float32)))
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3

    def forward(params, x, key, train):
        for k, (W, b) in enumerate(params):
            x = x @ W + b
            if k < len(params) - 1:
                x = jax.nn.relu(x)
                if train:
                    key, sub = jax.random.split(key)
                    keep = jax.random.bernoulli(sub, 1 - DROPOUT, x.shape)
                    x = jnp.where(keep, x / (1 - DROPOUT), 0)
        return x

    def loss_fn(params, x, y, key):
        logits = forward(params, x, key, True)
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])

    @jax.jit
    def update(params, m, v, t, x, y, key):
        loss, g = jax.value_and_grad(loss_fn)(params, x, y, key)
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        c1, c2 = 1 - b1**t, 1 - b2**t
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
        return params, m, v, loss

    state = {"params": params, "m": m, "v": v, "t": 0, "key": key}

    def train_step(xb, yb):
        state["t"] += 1
        state["key"], sub = jax.random.split(state["key"])
        # Fresh copies: JAX copies its inputs asynchronously, and the loop
        # refills xb and yb with the next batch at once.
        state["params"], state["m"], state["v"], loss = update(
            state["params"], state["m"], state["v"], state["t"], xb.copy(), yb.copy(), sub)
        return loss  # left on the device: no sync per step, as a JAX user writes it

    def predict(X):
        return np.asarray(jax.jit(lambda p, x: forward(p, x, None, False))(state["params"], X)).argmax(1)

    info = {"jax": jax.__version__, "jax_devices": str(jax.devices()),
            "xla_flags": os.environ.get("XLA_FLAGS"), "cpu_affinity": len(os.sched_getaffinity(0))}
    return train_step, None, predict, info


# ------------------------------------------------------------------ worker


def peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(args):
    backend = args.worker
    t_start = args.t0 if args.t0 is not None else time.time()
    t_data = time.time()
    # The floor needs the data's size only.
    Xtr, ytr, Xte, yte, data_name = load_prepared(args.data, "r" if backend == "floor" else None)
    data_s = time.time() - t_data
    n, bs = len(Xtr), args.batch_size
    head = {"backend": backend, "data": data_name, "n_train": int(n), "batch_size": bs}
    if backend == "floor":
        out = run_floor(args, n)
    else:
        if backend in FASTNN_WORKERS:
            train_step, fit_epoch, predict, info = make_fastnn(backend, args)
        elif backend == "torch":
            train_step, fit_epoch, predict, info = make_torch(args)
        else:
            train_step, fit_epoch, predict, info = make_jax(args)
        if not backend.endswith("-fit"):
            fit_epoch = None
        out = train(args, Xtr, ytr, train_step, fit_epoch, t_start, data_s)
        out["test_accuracy"] = float((predict(Xte) == yte).mean())
        out.update(info)
    out["epochs"] = len(out["epoch_s"])
    out["peak_rss_mb"] = peak_rss_mb()
    out["imported_fastnn"] = "fastnn" in sys.modules
    return {**head, **out}


def train(args, Xtr, ytr, train_step, fit_epoch, t_start, data_s):
    n, bs = len(Xtr), args.batch_size
    epoch_s, losses = [], []
    first_step_s = None
    if fit_epoch is not None:
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            fit_epoch(Xtr, ytr, epoch)
            epoch_s.append(time.perf_counter() - t0)
    else:
        rng = np.random.default_rng(args.seed)
        xbuf = np.empty((bs, Xtr.shape[1]), np.float32)
        ybuf = np.empty(bs, np.int64)
        for epoch in range(args.epochs):
            perm = rng.permutation(n)
            total = 0.0
            t0 = time.perf_counter()
            for s, i in enumerate(range(0, n, bs)):
                idx = perm[i:i + bs]
                k = len(idx)
                xb = np.take(Xtr, idx, axis=0, out=xbuf[:k])
                yb = np.take(ytr, idx, out=ybuf[:k])
                loss = train_step(xb, yb)
                if first_step_s is None:
                    float(loss)
                    first_step_s = time.time() - t_start - data_s
                if s % 50 == 0:
                    total += float(loss)  # a sampled running loss: no sync every step
            epoch_s.append(time.perf_counter() - t0)
            losses.append(total / len(range(0, n, 50 * bs)))
    steady = float(np.median(epoch_s[1:])) if len(epoch_s) > 1 else float(epoch_s[0])
    return {"epoch_s": epoch_s, "first_epoch_s": epoch_s[0], "steady_epoch_s": steady,
            "first_step_s": first_step_s, "data_load_s": data_s, "sampled_train_loss": losses}


# -------------------------------------------------------------------- main


def importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def summarise(per_round, order):
    """One row per backend: medians and ranges over rounds, ratios to the clean floor."""
    floor = [r["floor_epoch_s"] for r in per_round.get("floor", [])]
    floor_med = float(np.median(floor))
    floor_best = min(min(r["epoch_s"]) for r in per_round["floor"])
    rows = []
    for b in order:
        runs = per_round.get(b)
        if not runs:
            continue
        epochs = [r["steady_epoch_s"] for r in runs]
        med = float(np.median(epochs))
        # the fastest epoch after the first in any round (the floor: any of its epochs)
        best = min(min(r["epoch_s"] if b == "floor" or len(r["epoch_s"]) == 1 else r["epoch_s"][1:])
                   for r in runs)
        acc = [r["test_accuracy"] for r in runs if r["test_accuracy"] is not None]
        first = [r["first_step_s"] for r in runs if r.get("first_step_s") is not None]
        rows.append({
            "backend": b, "data": runs[0]["data"], "n_train": runs[0]["n_train"],
            "batch_size": runs[0]["batch_size"], "epochs": runs[0]["epochs"], "rounds": len(runs),
            "steady_epoch_s": med, "steady_epoch_min_s": min(epochs), "steady_epoch_max_s": max(epochs),
            "floor_epoch_s": floor_med, "floor_epoch_min_s": min(floor), "floor_epoch_max_s": max(floor),
            "ratio_to_floor": med / floor_med,
            "ratio_min": min(epochs) / floor_med, "ratio_max": max(epochs) / floor_med,
            "best_epoch_s": best, "floor_best_epoch_s": floor_best, "best_ratio": best / floor_best,
            "samples_per_s": runs[0]["n_train"] / med,
            "first_epoch_s": float(np.median([r["first_epoch_s"] for r in runs])),
            "first_step_s": float(np.median(first)) if first else None,
            "test_accuracy": float(np.median(acc)) if acc else None,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "imported_fastnn": any(r["imported_fastnn"] for r in runs),
            "per_round": runs,
        })
    return rows


def fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


def print_table(rows, args):
    head = (f"{'backend':<16} {'epoch s':>8} {'min-max':>13} {'ratio':>6} {'ratio min-max':>13} "
            f"{'best':>6} {'best ratio':>10} {'test acc':>8} {'1st epoch':>9} {'1st step':>8} {'peak MB':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['backend']:<16} {r['steady_epoch_s']:>8.3f} "
              f"{r['steady_epoch_min_s']:>6.3f}-{r['steady_epoch_max_s']:<6.3f} {r['ratio_to_floor']:>6.2f} "
              f"{r['ratio_min']:>6.2f}-{r['ratio_max']:<6.2f} {r['best_epoch_s']:>6.3f} {r['best_ratio']:>10.2f} "
              f"{fmt(r['test_accuracy'], '>8.4f'):>8} "
              f"{r['first_epoch_s']:>9.2f} {fmt(r['first_step_s'], '>8.2f'):>8} {r['peak_rss_mb']:>7.0f}")
    print(f"epoch s: median over {args.rounds} round(s) of each worker's median epoch after the first "
          f"(floor: best of {max(3, args.epochs)} epochs); ratio = epoch / median clean floor; "
          f"best: the fastest epoch after the first in any round, best ratio = best / the floor's fastest "
          f"epoch; batch {args.batch_size}, threads {args.threads or 'default'}")


UNSTEADY = 1.2  # a backend's slowest round over its fastest beyond this: the machine moved


def unsteady(rows):
    """The backends whose rounds spread by more than UNSTEADY (slowest / fastest round)."""
    return [r["backend"] for r in rows
            if r["rounds"] > 1 and r["steady_epoch_max_s"] > UNSTEADY * r["steady_epoch_min_s"]]


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, r in enumerate(rows):
        pts = [run["steady_epoch_s"] for run in r["per_round"]]
        ax.bar(i, r["steady_epoch_s"], color="C0" if r["backend"] != "floor" else "C1", alpha=0.6)
        ax.plot([i] * len(pts), pts, "k.", ms=6)
        ax.vlines(i, min(pts), max(pts), color="k", lw=1)
        ax.text(i, max(pts), f"{r['ratio_to_floor']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.axhline(rows[0]["floor_epoch_s"], color="C1", ls="--", lw=1, label="clean GEMM floor (median)")
    ax.set_xticks(range(len(rows)), [r["backend"] for r in rows], rotation=20)
    ax.set_ylabel("seconds per epoch")
    ax.set_title(f"{rows[0]['data'].split(',')[0][:40]}, batch {rows[0]['batch_size']}: "
                 f"median, each round (dots), ratio to floor", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def parse_backends(p, text):
    if text == "auto":
        names = ["floor", "numba-fit", "numba-loop", "numba-loop-dx", "numpy-fit", "torch", "jax"]
    else:
        names = []
        for b in (s.strip() for s in text.split(",")):
            if not b:
                continue
            for name in ALIASES.get(b, (b,)):
                if name not in BACKENDS:
                    p.error(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)} "
                            f"(or {', '.join(ALIASES)} for their fastnn variants)")
                names.append(name)
    if "floor" not in names:
        names.insert(0, "floor")  # every ratio needs it
    return list(dict.fromkeys(names))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of workers (default 3; --quick: 1)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per worker (default 4; the first is reported apart)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every worker (default: each library's own default)")
    p.add_argument("--backends", default="auto",
                   help=f"comma-separated from {','.join(BACKENDS)}; 'numba' = numba-fit,numba-loop, "
                        "'numpy' = numpy-fit (default: all; floor is always run)")
    p.add_argument("--data-dir", default=None, help="directory with the four MNIST/Fashion-MNIST IDX files")
    p.add_argument("--dataset", choices=("auto", "mnist", "fashion", "synthetic"), default="auto")
    p.add_argument("--quick", action="store_true", help="4096 training samples, 2 epochs, 1 round: seconds, for CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join("results", "mnist_speed.json"), help="where to write the results")
    p.add_argument("--png", default=os.path.join("results", "mnist_speed.png"),
                   help="chart of the spread (needs matplotlib; '' for none)")
    p.add_argument("--show-contention", action="store_true",
                   help="also run numba-loop with spinning OpenMP threads and every kernel parallel "
                        "(FASTNN_THREADING_LAYER=omp, OMP_WAIT_POLICY=ACTIVE, FASTNN_PARALLEL_MIN_WORK=0), to show "
                        "the thread-pool fight that fastnn's defaults avoid")
    p.add_argument("--worker", choices=BACKENDS + ("numba-unmanaged",), help=argparse.SUPPRESS)
    p.add_argument("--prepare", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    given = argv if argv is not None else sys.argv[1:]
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.rounds < 1:
        p.error("--epochs, --batch-size and --rounds must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.quick and "--epochs" not in given:
        args.epochs = 2
    if args.quick and "--rounds" not in given:
        args.rounds = 1

    if args.prepare:
        prepare_data(args, args.prepare)
        return 0
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    backends = parse_backends(p, args.backends)
    missing = [b for b in backends if b in PEERS and not importable(PEERS[b])]
    for b in missing:
        print(f"skipping {b}: not importable")
    backends = [b for b in backends if b not in missing]
    if args.show_contention:
        backends.append("numba-unmanaged")
    env, removed = clean_environ(args.threads)
    if removed:
        print(f"removed from the workers' environment: {', '.join(removed)}")

    common = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the data dir is removed
    tmp = tempfile.mkdtemp(prefix="mnist_speed_")
    try:
        prep = [sys.executable, os.path.abspath(__file__), "--prepare", tmp, "--dataset", args.dataset,
                "--seed", str(args.seed)] + (["--data-dir", args.data_dir] if args.data_dir else []) + (
                ["--quick"] if args.quick else [])
        proc = subprocess.run(prep, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"loading the data failed (exit {proc.returncode})")
        per_round = {}
        for rnd in range(args.rounds):
            for b in backends:
                wenv = dict(env)
                if b == "numba-unmanaged":
                    wenv.update(FASTNN_THREADING_LAYER="omp", OMP_WAIT_POLICY="ACTIVE", FASTNN_PARALLEL_MIN_WORK="0")
                if b == "jax":
                    wenv["JAX_PLATFORMS"] = "cpu"  # a CPU race: never an accelerator JAX finds
                if b == "jax" and args.threads:
                    if args.threads == 1:
                        wenv["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", b, "--data", tmp,
                       "--t0", repr(time.time())] + common
                if b == "jax" and args.threads and args.threads < os.cpu_count():
                    # XLA sizes its thread pool by the CPUs the process may use.
                    cmd = ["taskset", "-c", f"0-{args.threads - 1}"] + cmd if shutil.which("taskset") else cmd
                proc = subprocess.run(cmd, capture_output=True, text=True, env=wenv)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stderr[-4000:])
                    raise SystemExit(f"{b} worker failed (exit {proc.returncode})")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res["round"] = rnd + 1
                per_round.setdefault(b, []).append(res)
                print(f"round {rnd + 1}/{args.rounds} {b}: {res['steady_epoch_s']:.3f} s/epoch", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = summarise(per_round, backends)
    leaks = [r["backend"] for r in rows if r["imported_fastnn"] and r["backend"] not in FASTNN_WORKERS]
    if leaks:
        raise SystemExit(f"workers {leaks} imported fastnn: their figures are not clean")
    print()
    print(f"data: {rows[0]['data']} ({rows[0]['n_train']} training samples)")
    print_table(rows, args)
    moved = unsteady(rows)
    if moved:
        print(f"unsteady: the rounds of {', '.join(moved)} differ by more than {UNSTEADY}x (slowest / "
              f"fastest): the machine's speed moved during the run; compare the best columns, or run again")
    if missing:
        print(f"not measured (not importable): {', '.join(missing)}")
    notes = {(r.get("threading") or {}).get("blas_note") for rs in per_round.values() for r in rs} - {None}
    for note in sorted(notes):  # from the fastnn workers: the floor's and fastnn's BLAS
        print(f"note: {note}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        machine = {"python": platform.python_version(), "platform": platform.platform(),
                   "processor": platform.processor(), "cpu_count": os.cpu_count(), "numpy": np.__version__}
        with open(args.json, "w") as f:
            json.dump({"argv": given, "machine": machine, "rounds": args.rounds, "threads": args.threads,
                       "env_removed": removed, "not_importable": missing, "results": rows}, f, indent=2)
        print(f"wrote {args.json}")
    if args.png:
        if plot(rows, args.png):
            print(f"wrote {args.png}")
        else:
            print("no chart: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
