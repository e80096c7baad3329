"""Adam's step on the state that training leaves: fastnn against PyTorch, each in its own process.

    python benchmarks/adam_trained_state.py                  # 3 rounds, Fashion-MNIST or MNIST
    python benchmarks/adam_trained_state.py --rounds 5 --data-dir DIR

Each worker trains the seed network (784-256 ReLU Dropout(0.2) - 128 ReLU
Dropout(0.2) - 10, softmax cross-entropy, Adam lr 1e-3, float32) for one
epoch at batch 64 with its own library (``fastnn.fit``, or a PyTorch loop
with ``torch.optim.Adam(fused=True)``, PyTorch's fastest CPU update), takes
one more batch's gradients, and times ``opt.step()`` on that state: the
parameters and the optimizer state are restored before every call (not
timed), so every timed step sees the trained state. The first moments of
inputs whose gradient stays zero (the images' blank borders) decay by beta1
a step into subnormal floats; ``torch_flushed`` is PyTorch on its own state
with those set to zero, which shows what they cost it. fastnn's update
kernels flush subnormals as they go (its state holds none).

Workers run in interleaved rounds (fastnn, torch, torch_flushed, ...),
each a fresh process; the peers' processes never import fastnn and get no
fastnn environment variables (the data is loaded by a separate worker and
handed over as .npy files). Reported: the median over rounds of each
process's median step (``--steps`` timed steps), the rounds' min-max, the
fraction of subnormal first moments, and the time against fastnn's.
Writes ``results/adam_trained_state.json``. PyTorch missing: the script
says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from vs_torch import clean_environ  # noqa: E402  (the peers' environment: no fastnn settings, no thread caps)

LIBS = ("fastnn", "torch", "torch_flushed")
TINY = np.finfo(np.float32).tiny


def data_worker(args):
    """Load through fastnn.data and write X.npy, y.npy (training set)."""
    sys.path.insert(0, ROOT)
    from fastnn import data

    for kind in ("fashion", "mnist"):
        try:
            (X, y), _ = data.load_mnist(args.data_dir, kind=kind)
            break
        except FileNotFoundError:
            continue
    else:
        raise SystemExit("no Fashion-MNIST or MNIST found (see fastnn.data.load_mnist): "
                         "the state must come from real training")
    rows = args.train_rows or len(X)
    np.save(os.path.join(args.out, "X.npy"), np.ascontiguousarray(X[:rows]))
    np.save(os.path.join(args.out, "y.npy"), np.ascontiguousarray(y[:rows]))
    print(json.dumps({"data": {"fashion": "Fashion-MNIST", "mnist": "MNIST"}[kind], "rows": rows}))


def torch_state(X, y, flushed):
    """(step, restore, first moments) after one epoch of a PyTorch loop;
    ``flushed``: the state's subnormals set to zero."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(X)))
    for start in range(0, len(X), 64):
        rows = order[start:start + 64]
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(Xt[rows]), yt[rows]).backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    torch.nn.functional.cross_entropy(model(Xt[:64]), yt[:64]).backward()
    params = list(model.parameters())
    with torch.no_grad():
        if flushed:
            for p in params:
                for name in ("exp_avg", "exp_avg_sq"):
                    a = opt.state[p][name]
                    a[a.abs() < TINY] = 0
        saved = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]

    def restore():
        with torch.no_grad():
            for p, (p0, state) in zip(params, saved):
                p.copy_(p0)
                for k, v in state.items():
                    opt.state[p][k].copy_(v)

    moments = np.concatenate([opt.state[p]["exp_avg"].numpy().ravel() for p in params])
    return opt.step, restore, moments, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def fastnn_state(X, y, flushed=False):
    """(step, restore, first moments) after one epoch of ``fastnn.fit``."""
    sys.path.insert(0, ROOT)
    import fastnn
    from fastnn import nn, optim

    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)])
    opt = optim.Adam(model.parameters(), lr=1e-3)
    fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=64, seed=0, progress=False)
    loss_fn = nn.SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(X[:64]), y[:64])
    model.backward(loss_fn.backward(), need_input_grad=False)
    params = model.parameters()
    saved = [(np.array(p), {k: v.copy() for k, v in opt.state[i].items() if isinstance(v, np.ndarray)})
             for i, p in enumerate(params)]

    def restore():
        for i, (p0, state) in enumerate(saved):
            np.copyto(params[i], p0)
            for k, v in state.items():
                np.copyto(opt.state[i][k], v)

    moments = np.concatenate([opt.state[i]["exp_avg"].ravel() for i in range(len(params))])
    return opt.step, restore, moments, {"fastnn_file": fastnn.__file__}


def run_worker(args):
    X = np.load(os.path.join(args.out, "X.npy"))
    y = np.load(os.path.join(args.out, "y.npy"))
    make = fastnn_state if args.worker == "fastnn" else torch_state
    step, restore, moments, info = make(X, y, flushed=args.worker == "torch_flushed")
    for _ in range(3):
        restore()
        step()
    times = []
    for _ in range(args.steps):
        restore()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"lib": args.worker, "median_s": float(np.median(times)),
                      "subnormal_moments": float(np.mean((moments != 0) & (np.abs(moments) < TINY))),
                      "fastnn_imported": "fastnn" in sys.modules, **info}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="processes per library, interleaved (default 3)")
    p.add_argument("--steps", type=int, default=200, help="timed steps per process (default 200)")
    p.add_argument("--data-dir", default=None, help="MNIST/Fashion-MNIST IDX files (see fastnn.data.load_mnist)")
    p.add_argument("--train-rows", type=int, default=0, help="train on the first N images only (tests)")
    p.add_argument("--json", default=os.path.join(ROOT, "results", "adam_trained_state.json"))
    p.add_argument("--worker", choices=("data",) + LIBS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.train_rows < 0:
        p.error("--rounds and --steps must be at least 1, --train-rows at least 0")
    if args.worker == "data":
        return data_worker(args)
    if args.worker:
        return run_worker(args)
    if importlib.util.find_spec("torch") is None:
        print("PyTorch is not installed: nothing to compare against (pip install torch)")
        return 0

    def call(worker, out):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--out", out,
               "--steps", str(args.steps), "--train-rows", str(args.train_rows)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_environ(), timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"{worker} worker failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as out:
        meta = call("data", out)
        results = {lib: [] for lib in LIBS}
        for r in range(args.rounds):
            for lib in LIBS:
                results[lib].append(call(lib, out))
                print(f"round {r + 1}/{args.rounds} {lib}: done", file=sys.stderr, flush=True)
    base = np.median([w["median_s"] for w in results["fastnn"]])
    rows = []
    print(f"\nAdam step on the seed network's state after one epoch of {meta['data']} "
          f"({meta['rows']} images, batch 64); median of {args.steps} steps a process, "
          f"{args.rounds} process(es) each\n")
    print(f"{'library':14s} {'step':>10s} {'rounds':>17s} {'subnormal m':>12s} {'/ fastnn':>9s}")
    for lib in LIBS:
        t = np.array([w["median_s"] for w in results[lib]]) * 1e6
        sub = results[lib][0]["subnormal_moments"]
        rows.append({"lib": lib, "median_us": float(np.median(t)), "rounds_us": [float(t.min()), float(t.max())],
                     "subnormal_moments": sub, "ratio_to_fastnn": float(np.median(t) / (base * 1e6))})
        print(f"{lib:14s} {np.median(t):8.1f} us {t.min():7.1f}-{t.max():7.1f} us {sub:11.2%} "
              f"{np.median(t) / (base * 1e6):8.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"data": meta, "steps": args.steps, "rounds": args.rounds, "rows": rows,
                   "workers": results}, f, indent=1)
    print(f"wrote {os.path.relpath(args.json, ROOT) if args.json.startswith(ROOT) else args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
