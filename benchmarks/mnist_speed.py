"""Train the seed's MNIST network on each backend and time it against the GEMM floor.

    python benchmarks/mnist_speed.py                  # numba, numpy (+ torch, jax if importable)
    python benchmarks/mnist_speed.py --quick          # a subset, a few seconds (CI)
    python benchmarks/mnist_speed.py --help

The network is the seed's: 784-256 ReLU Dropout(0.2) - 128 ReLU Dropout(0.2)
- 10, softmax cross-entropy, Adam(lr=1e-3), batch 64. Each backend runs in
its own process, so the first epoch includes its compile (or cache load)
and the peak memory is its own. For every epoch the same process also times
the **GEMM floor**: the matrix products of that epoch alone (3 forward,
3 weight-gradient and 2 input-gradient products per step, the ones a
training step needs), through the same BLAS, on the same data shapes.
``ratio = steady-state epoch / floor``: 1.0 would mean everything but the
matrix products is free.

Data: MNIST or Fashion-MNIST found by ``fastnn.data`` (``--data-dir``,
``FASTNN_DATA_DIR``, the cache dir, Debian's dataset-fashion-mnist), else a
synthetic MNIST-shaped set, labelled as such in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("numba", "numpy", "torch", "jax")
LAYERS = (784, 256, 128, 10)
DROPOUT = 0.2


# ------------------------------------------------------------------ data


def load_data(args):
    """(X_train, y_train, X_test, y_test, description)."""
    from fastnn import data

    kinds = ["mnist", "fashion"] if args.dataset == "auto" else [args.dataset]
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
            Xtr = None
    else:
        Xtr = None
    if Xtr is None:
        (Xtr, ytr), (Xte, yte) = data.synthetic_mnist(seed=args.seed)
        name = "SYNTHETIC MNIST-shaped data (no MNIST/Fashion-MNIST found)"
    if args.quick:
        Xtr, ytr, Xte, yte = Xtr[:4096], ytr[:4096], Xte[:1024], yte[:1024]
        name += ", quick subset"
    return Xtr, ytr, Xte, yte, name


# -------------------------------------------------------------- the floor


class GemmFloor:
    """The matrix products of one training epoch, alone, on preallocated arrays."""

    def __init__(self, weights, batch_size, dtype=np.float32):
        rng = np.random.default_rng(0)
        self.W = [np.ascontiguousarray(w, dtype=dtype) for w in weights]
        self.bufs = {}
        self.rng = rng
        self.dtype = dtype

    def _arrays(self, n):
        if n not in self.bufs:
            acts = [np.ones((n, w.shape[0]), self.dtype) for w in self.W] + [
                np.ones((n, self.W[-1].shape[1]), self.dtype)]
            grads = [np.ones((n, w.shape[1]), self.dtype) for w in self.W]
            dxs = [np.empty((n, w.shape[0]), self.dtype) for w in self.W]
            dWs = [np.empty_like(w) for w in self.W]
            self.bufs[n] = (acts, grads, dxs, dWs)
        return self.bufs[n]

    def step(self, n):
        acts, grads, dxs, dWs = self._arrays(n)
        W = self.W
        for k in range(len(W)):
            np.matmul(acts[k], W[k], out=acts[k + 1] if k + 1 < len(W) else grads[k])
        for k in range(len(W) - 1, -1, -1):
            np.matmul(acts[k].T, grads[k], out=dWs[k])
            if k > 0:
                np.matmul(grads[k], W[k].T, out=dxs[k])

    def epoch(self, sizes):
        t = time.perf_counter()
        for n in sizes:
            self.step(n)
        return time.perf_counter() - t


# ---------------------------------------------------------------- backends


def make_fastnn(backend, seed):
    import fastnn
    from fastnn import nn, optim

    fastnn.manual_seed(seed)
    model = nn.Sequential([
        nn.Linear(784, 256), nn.ReLU(), nn.Dropout(DROPOUT),
        nn.Linear(256, 128), nn.ReLU(), nn.Dropout(DROPOUT),
        nn.Linear(128, 10),
    ], backend=backend)
    loss_fn = nn.SoftmaxCrossEntropy()
    loss_fn.backend = backend
    opt = optim.Adam(model.parameters(), lr=1e-3, backend=backend)
    weights = [np.asarray(layer.W) for layer in model if isinstance(layer, nn.Linear)]

    def train_step(xb, yb):
        out = model.forward(xb)
        loss = loss_fn.forward(out, yb)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
        return loss

    def predict(X):
        model.eval()
        out = np.concatenate([model.forward(X[i:i + 1000]) for i in range(0, len(X), 1000)])
        model.train()
        return out.argmax(1)

    info = {"threading": fastnn.threading_info()}
    return train_step, predict, weights, info


def make_torch(seed):
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Dropout(DROPOUT),
        torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Dropout(DROPOUT),
        torch.nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    weights = [m.weight.detach().numpy().T.copy() for m in model if isinstance(m, torch.nn.Linear)]

    def train_step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return float(loss)

    def predict(X):
        model.eval()
        with torch.no_grad():
            out = model(torch.from_numpy(X)).numpy()
        model.train()
        return out.argmax(1)

    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    return train_step, predict, weights, info


def make_jax(seed):
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(seed)
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
        # Fresh NumPy copies: JAX copies its inputs asynchronously, and the
        # loop refills xb and yb with the next batch at once.
        state["params"], state["m"], state["v"], loss = update(
            state["params"], state["m"], state["v"], state["t"], xb.copy(), yb.copy(), sub)
        return loss  # left on the device: no sync per step, as a JAX user would write it

    def predict(X):
        return np.asarray(jax.jit(lambda p, x: forward(p, x, None, False))(state["params"], X)).argmax(1)

    weights = [np.asarray(W) for W, _ in params]
    info = {"jax": jax.__version__, "jax_devices": str(jax.devices())}
    return train_step, predict, weights, info


# ------------------------------------------------------------------ worker


def peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(args):
    t_start = float(os.environ.get("FASTNN_SPEED_T0", time.time()))
    backend = args.worker
    import fastnn.data  # noqa: F401  (imports count towards the first step, not the data)

    t_data = time.time()
    Xtr, ytr, Xte, yte, data_name = load_data(args)
    data_s = time.time() - t_data
    if backend in ("numba", "numpy"):
        train_step, predict, weights, info = make_fastnn(backend, args.seed)
    elif backend == "torch":
        train_step, predict, weights, info = make_torch(args.seed)
    else:
        train_step, predict, weights, info = make_jax(args.seed)
    floor = GemmFloor(weights, args.batch_size)
    n, bs = len(Xtr), args.batch_size
    sizes = [min(bs, n - i) for i in range(0, n, bs)]
    rng = np.random.default_rng(args.seed)
    xbuf = np.empty((bs, Xtr.shape[1]), np.float32)
    ybuf = np.empty(bs, np.int64)
    epoch_s, floor_s, losses = [], [], []
    first_step_s = None
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
                # process start to the first trained step, data loading excluded
                first_step_s = time.time() - t_start - data_s
            if s % 50 == 0:
                total += float(loss)  # a sampled running loss: no sync every step
        epoch_s.append(time.perf_counter() - t0)
        losses.append(total / len(range(0, n, 50 * bs)))
        floor_s.append(floor.epoch(sizes))
    acc = float((predict(Xte) == yte).mean())
    steady = float(np.median(epoch_s[1:])) if len(epoch_s) > 1 else float(epoch_s[0])
    floor_med = float(np.median(floor_s[1:])) if len(floor_s) > 1 else float(floor_s[0])
    return {
        "backend": args.label or backend, "data": data_name, "n_train": int(n), "batch_size": bs,
        "epochs": args.epochs, "epoch_s": epoch_s, "floor_s": floor_s,
        "first_epoch_s": epoch_s[0], "steady_epoch_s": steady, "floor_epoch_s": floor_med,
        "ratio_to_floor": steady / floor_med, "samples_per_s": n / steady,
        "first_step_s": first_step_s, "data_load_s": data_s, "test_accuracy": acc, "sampled_train_loss": losses,
        "peak_rss_mb": peak_rss_mb(), **info,
    }


# -------------------------------------------------------------------- main


def importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def print_table(results, batch_size):
    head = (f"{'backend':<15} {'1st epoch s':>11} {'epoch s':>8} {'floor s':>8} {'ratio':>6} "
            f"{'samples/s':>10} {'test acc':>8} {'1st step s':>10} {'peak MB':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['backend']:<15} {r['first_epoch_s']:>11.2f} {r['steady_epoch_s']:>8.3f} "
              f"{r['floor_epoch_s']:>8.3f} {r['ratio_to_floor']:>6.2f} {r['samples_per_s']:>10.0f} "
              f"{r['test_accuracy']:>8.4f} {r['first_step_s']:>10.2f} {r['peak_rss_mb']:>8.0f}")
    print(f"epoch s: median of epochs after the first; floor s: the same epoch's matrix "
          f"products alone (same process, median); batch {batch_size}")


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [r["backend"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names, [r["steady_epoch_s"] for r in results], label="epoch (steady state)")
    ax.bar(names, [r["floor_epoch_s"] for r in results], width=0.4, label="GEMM floor")
    for i, r in enumerate(results):
        ax.text(i, r["steady_epoch_s"], f"{r['ratio_to_floor']:.2f}x", ha="center", va="bottom")
    ax.set_ylabel("seconds per epoch")
    ax.set_title(f"{results[0]['data'].split(',')[0][:40]}, batch {results[0]['batch_size']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4, help="epochs per backend (default 4; the first is reported apart)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backends", default="auto",
                   help="comma-separated from numba,numpy,torch,jax (default: numba,numpy and torch/jax when importable)")
    p.add_argument("--data-dir", default=None, help="directory with the four MNIST/Fashion-MNIST IDX files")
    p.add_argument("--dataset", choices=("auto", "mnist", "fashion", "synthetic"), default="auto")
    p.add_argument("--quick", action="store_true", help="4096 training samples, 2 epochs: seconds, for CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join("results", "mnist_speed.json"), help="where to write the results")
    p.add_argument("--png", default=os.path.join("results", "mnist_speed.png"), help="bar chart (needs matplotlib)")
    p.add_argument("--show-contention", action="store_true",
                   help="also run numba with the thread pools unmanaged (spinning OpenMP "
                        "threads, every kernel parallel) to show what fastnn's settings avoid")
    p.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be positive")
    if args.quick and "--epochs" not in (argv if argv is not None else sys.argv[1:]):
        args.epochs = 2

    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    if args.backends == "auto":
        backends = ["numba", "numpy"] + [b for b in ("torch", "jax") if importable(b)]
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in BACKENDS]
        if bad:
            p.error(f"unknown backend(s) {bad}; choose from {BACKENDS}")
    results = []
    base = [sys.executable, os.path.abspath(__file__), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--dataset", args.dataset, "--seed", str(args.seed)]
    if args.data_dir:
        base += ["--data-dir", args.data_dir]
    if args.quick:
        base.append("--quick")
    runs = [(b, b, {}) for b in backends]
    if args.show_contention:
        # The pitfall fastnn's _config avoids: OpenMP threads that spin after
        # each kernel, fighting OpenBLAS's threads for the same cores.
        runs.append(("numba", "numba-unmanaged",
                     {"OMP_WAIT_POLICY": "ACTIVE", "FASTNN_PARALLEL_MIN_WORK": "0",
                      "FASTNN_MANAGE_BLAS": "0"}))
    for backend, label, extra_env in runs:
        if backend in ("torch", "jax") and not importable(backend):
            print(f"skipping {backend}: not importable")
            continue
        env = dict(os.environ, FASTNN_SPEED_T0=repr(time.time()), **extra_env)
        proc = subprocess.run(base + ["--worker", backend, "--label", label],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{label} worker failed (exit {proc.returncode})")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{label}: done ({results[-1]['data']})", flush=True)
    print()
    print(f"data: {results[0]['data']} ({results[0]['n_train']} training samples)")
    print_table(results, args.batch_size)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:], "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    if args.png and plot(results, args.png):
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
