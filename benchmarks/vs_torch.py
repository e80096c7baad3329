"""Every fastnn module's forward + backward against the PyTorch module, each framework in its own process.

    python benchmarks/vs_torch.py                    # all modules, 3 sizes, float32 and float64
    python benchmarks/vs_torch.py --sizes 1024x1024 --dtypes float32 --ops relu,layernorm
    python benchmarks/vs_torch.py --help

For each module (Linear (D -> D), ReLU, LeakyReLU, Sigmoid, Tanh, GELU
(tanh approximation), SiLU, softmax cross-entropy (integer labels, and
probability rows as ``softmax_xent_soft``), BCE with logits (0/1
targets), MSE, L1 and Huber (delta 1) losses (mean reduction), BatchNorm,
LayerNorm, Dropout(0.2), training mode) and each input shape (N, D), one
timed repeat is ``forward(x)`` then ``backward(dy)``, input gradient
included (parameter gradients too). The optimizers (SGD with
momentum 0.9, Adam, AdamW; PyTorch's with ``fused=True``, its fastest CPU
update) time one ``step()`` on one (N, D) parameter; ``adam_decayed`` is
Adam on the state of units whose gradient stopped long ago (half the
gradient zero, those moments subnormal). Each framework runs in its own
worker process, started without fastnn's environment variables, in
interleaved rounds (fastnn, torch, fastnn, torch, ...); the time reported
is the median of every timed repeat of every round (``--repeats`` per round,
after ``--warmup`` untimed ones). ``ratio = fastnn / torch``: above 1,
PyTorch is faster; ``rounds``: the min-max over rounds of each round's
ratio of medians (its spread). Each worker times Linear after every other module: a
BLAS product leaves OpenBLAS's workers spinning on the other cores for a
while, which slows a parallel fastnn kernel run right after it (inside a
Sequential and an optimizer update fastnn's kernels therefore go parallel
only at larger sizes, see fastnn/_config.py).

For the memory-bound modules the table adds GB/s: the bytes the op must move
at least (forward: read x, write y; backward: read dy and what the forward
saved, write dx; softmax-CE: read the logits (and soft targets), write dx,
which its training forward computes; the pointwise losses (BCE with
logits, MSE, L1, Huber): read the predictions and targets, write dx, the
same; the optimizers: read the parameter, gradient and state, write the
parameter and state; Dropout: recomputes its mask) divided by its time,
and the bandwidth of a same-size
``np.copyto`` (read + write) timed in the fastnn worker right before each
op (the same repeats), so that each op is set against the copy of the same
moment. That copy, one pair of arrays copied again and again, keeps part
of itself in a large L3 (on the development machine 32 MiB of a 32 MiB L3
went 1.5x as fast as a copy from memory), while the ops touch more memory a
call (ReLU's x, y, dy and dx: 64 MiB at (4096, 1024) float32). ``of mem
copy`` sets each op against a second copy that cycles through as many
(source, destination) pairs as the op touches arrays (``FOOTPRINT``; two
pairs for ReLU's four arrays), so that no pair is in cache when its turn
comes: a copy from memory. The two bracket the op: the first favours the
copy, the second the op (an op re-reads some of what it wrote last, such as
ReLU's backward reading the output of its forward, from L3).

PyTorch missing: the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPS = ("linear", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softmax_xent",
       "softmax_xent_soft", "bce_logits", "mse", "l1", "huber", "batchnorm", "layernorm", "dropout",
       "sgd_momentum", "adam", "adamw", "adam_decayed")
# the pointwise losses: fastnn module, PyTorch function
LOSSES = {"bce_logits": ("BCEWithLogitsLoss", "binary_cross_entropy_with_logits"),
          "mse": ("MSELoss", "mse_loss"), "l1": ("L1Loss", "l1_loss"), "huber": ("HuberLoss", "huber_loss")}
# The optimizer updates: one step() on one (N, D) parameter; class, hyperparameters.
OPTIMIZERS = {"sgd_momentum": ("SGD", dict(lr=1e-3, momentum=0.9)), "adam": ("Adam", dict(lr=1e-3)),
              "adamw": ("AdamW", dict(lr=1e-3, weight_decay=1e-2)), "adam_decayed": ("Adam", dict(lr=1e-3))}
# Arrays of the input's size the op must read or write at least (forward + backward;
# an update reads the parameter, its gradient and state, and writes the parameter and state).
PASSES = {"relu": 5, "leaky_relu": 5, "sigmoid": 5, "tanh": 5, "gelu": 5, "silu": 5, "softmax_xent": 2,
          "softmax_xent_soft": 3, "bce_logits": 3, "mse": 3, "l1": 3, "huber": 3,
          "batchnorm": 5, "layernorm": 5, "dropout": 4,
          "sgd_momentum": 5, "adam": 7, "adamw": 7, "adam_decayed": 7}
# Distinct arrays of the input's size an op touches in a forward + backward
# (its working set): the memory copy cycles through FOOTPRINT // 2 pairs.
FOOTPRINT = {"relu": 4, "leaky_relu": 4, "sigmoid": 4, "tanh": 4, "gelu": 4, "silu": 4, "softmax_xent": 2,
             "softmax_xent_soft": 3, "bce_logits": 3, "mse": 3, "l1": 3, "huber": 3,
             "batchnorm": 4, "layernorm": 4, "dropout": 4,
             "sgd_momentum": 3, "adam": 4, "adamw": 4, "adam_decayed": 4}
SIZES = ("64x256", "1024x1024", "4096x1024")
DTYPES = ("float32", "float64")
STRIPPED = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def clean_environ(threads=None):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("FASTNN_") or k in STRIPPED)}
    if threads:
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[k] = str(threads)
    return env


def median_time(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


# ----------------------------------------------------------------- workers


def fastnn_case(op, n, d, dtype, rng):
    from fastnn import nn, optim

    if op in OPTIMIZERS:
        p, g, state = optimizer_state(op, n, d, dtype, rng)
        param = nn.Parameter(p)
        np.copyto(param.grad, g)
        opt = getattr(optim, OPTIMIZERS[op][0])([param], **OPTIMIZERS[op][1])
        for name, a in (state or {}).items():
            np.copyto(opt.state[0][name], a)
        return opt.step

    x = rng.standard_normal((n, d)).astype(dtype)
    dy = rng.standard_normal((n, d)).astype(dtype)
    if op in ("softmax_xent", "softmax_xent_soft"):
        labels = rng.integers(0, d, n) if op == "softmax_xent" else soft_targets(n, d, dtype, rng)
        mod = nn.SoftmaxCrossEntropy()

        def step():
            mod.forward(x, labels)
            mod.backward()
        return step
    if op in LOSSES:  # mean loss; BCE: logits against 0/1 targets, the others against values
        target = loss_targets(op, n, d, dtype, rng)
        mod = getattr(nn, LOSSES[op][0])()

        def step():
            mod.forward(x, target)
            mod.backward()
        return step
    mod = {
        "linear": lambda: nn.Linear(d, d, dtype=dtype),
        "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU,
        "batchnorm": lambda: nn.BatchNorm(d, dtype=dtype), "layernorm": lambda: nn.LayerNorm(d, dtype=dtype),
        "dropout": lambda: nn.Dropout(0.2, seed=0),
    }[op]()
    mod.train()

    def step():
        mod.forward(x)
        mod.backward(dy)
    return step


def optimizer_state(op, n, d, dtype, rng):
    """(parameter, gradient, Adam state or None) of shape (N, D). ``adam_decayed``:
    half the gradient zero and its moments subnormal, the state of units
    that stopped getting gradient long ago (m and v shrink by beta1 and
    beta2 each step until they are subnormal; on x86 every arithmetic
    operation on a subnormal is many times slower unless it is flushed)."""
    p = rng.standard_normal((n, d)).astype(dtype)
    g = (0.1 * rng.standard_normal((n, d))).astype(dtype)
    if op != "adam_decayed":
        return p, g, None
    dead = rng.random((n, d)) < 0.5
    g[dead] = 0
    m = (0.01 * rng.standard_normal((n, d))).astype(dtype)
    v = (m * m).astype(dtype)
    sub = np.finfo(dtype).smallest_normal / 64
    m[dead] = sub
    v[dead] = sub
    return p, g, {"exp_avg": m, "exp_avg_sq": v}


def soft_targets(n, d, dtype, rng):
    """Probability rows (label smoothing's kind of targets)."""
    t = rng.random((n, d))
    return (t / t.sum(axis=1, keepdims=True)).astype(dtype)


def loss_targets(op, n, d, dtype, rng):
    if op == "bce_logits":
        return (rng.random((n, d)) > 0.5).astype(dtype)
    return rng.standard_normal((n, d)).astype(dtype)


def torch_case(op, n, d, dtype, rng):
    import torch

    if op in OPTIMIZERS:
        p, g, state = optimizer_state(op, n, d, dtype, rng)
        param = torch.nn.Parameter(torch.from_numpy(p))
        param.grad = torch.from_numpy(g)
        # fused: PyTorch's fastest CPU update (its default is a loop of tensor ops)
        opt = getattr(torch.optim, OPTIMIZERS[op][0])([param], **OPTIMIZERS[op][1], fused=True)
        if state:
            opt.step()  # creates the state
            for name, a in state.items():
                opt.state[param][name].copy_(torch.from_numpy(a))
        return opt.step

    tdtype = getattr(torch, dtype)
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(dtype)).requires_grad_(True)
    dy = torch.from_numpy(rng.standard_normal((n, d)).astype(dtype))
    if op in ("softmax_xent", "softmax_xent_soft"):
        labels = torch.from_numpy(rng.integers(0, d, n) if op == "softmax_xent" else soft_targets(n, d, dtype, rng))

        def step():
            x.grad = None
            torch.nn.functional.cross_entropy(x, labels).backward()
        return step
    if op in LOSSES:
        target = torch.from_numpy(loss_targets(op, n, d, dtype, rng))
        loss = getattr(torch.nn.functional, LOSSES[op][1])

        def step():
            x.grad = None
            loss(x, target).backward()
        return step
    mod = {
        "linear": lambda: torch.nn.Linear(d, d, dtype=tdtype),
        "relu": torch.nn.ReLU, "leaky_relu": lambda: torch.nn.LeakyReLU(0.01), "sigmoid": torch.nn.Sigmoid,
        "tanh": torch.nn.Tanh, "gelu": lambda: torch.nn.GELU(approximate="tanh"), "silu": torch.nn.SiLU,
        "batchnorm": lambda: torch.nn.BatchNorm1d(d, dtype=tdtype),
        "layernorm": lambda: torch.nn.LayerNorm(d, dtype=tdtype),
        "dropout": lambda: torch.nn.Dropout(0.2),
    }[op]()
    mod.train()

    def step():
        x.grad = None
        mod.zero_grad(set_to_none=True)
        mod(x).backward(dy)
    return step


def run_worker(args):
    if args.worker == "fastnn":
        if os.path.exists(os.path.join(ROOT, "fastnn", "__init__.py")):
            sys.path.insert(0, ROOT)  # the checkout this script belongs to
        import fastnn

        if args.threads:
            fastnn.set_num_threads(args.threads)
        make, info = fastnn_case, {"fastnn_file": fastnn.__file__}
    else:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        make, info = torch_case, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    rng = np.random.default_rng(0)
    rows = []
    # Linear last: after a BLAS product OpenBLAS's workers spin on the other
    # cores for a while, and a parallel fastnn kernel then shares them (not
    # PyTorch's, whose products and kernels share one pool). Timed after the
    # other modules, each module is timed on its own.
    groups = ([op for op in args.ops if op != "linear"], [op for op in args.ops if op == "linear"])
    for g, ops in enumerate(groups):
        for dtype in args.dtypes:
            for n, d in args.sizes:
                if args.worker == "fastnn" and g == 0:
                    pairs = [(rng.standard_normal((n, d)).astype(dtype), np.empty((n, d), dtype))
                             for _ in range(max(copy_pairs(op) for op in PASSES))]
                for op in ops:
                    if args.worker == "fastnn" and op in PASSES:
                        # the bandwidth baselines right before the op: this machine's
                        # speed drifts within seconds
                        rows.append({"op": "copyto/" + op, "shape": [n, d], "dtype": dtype, "pairs": 1,
                                     "times": median_time(cycling_copy(pairs[:1]), args.repeats, args.warmup)})
                        rows.append({"op": "copymem/" + op, "shape": [n, d], "dtype": dtype, "pairs": copy_pairs(op),
                                     "times": median_time(cycling_copy(pairs[:copy_pairs(op)]),
                                                          args.repeats, args.warmup)})
                    step = make(op, n, d, dtype, rng)
                    rows.append({"op": op, "shape": [n, d], "dtype": dtype,
                                 "times": median_time(step, args.repeats, args.warmup)})
    if args.worker == "fastnn":
        info["threading"] = fastnn.threading_info()  # after the runs: the layer numba loaded
    return {"framework": args.worker, "imported_fastnn": "fastnn" in sys.modules,
            "imported_torch": "torch" in sys.modules, "rows": rows, **info}


# -------------------------------------------------------------------- main


def op_bytes(op, n, d, dtype):
    return PASSES[op] * n * d * np.dtype(dtype).itemsize if op in PASSES else None


def copy_pairs(op):
    """(source, destination) pairs the op's memory copy cycles through:
    at most the op's working set, at least one."""
    return max(1, FOOTPRINT[op] // 2)


def cycling_copy(pairs):
    """A function that copies the next pair at each call."""
    state = [0]

    def copy():
        src, dst = pairs[state[0] % len(pairs)]
        state[0] += 1
        np.copyto(dst, src)
    return copy


def combine(worker_results):
    """{(framework, op, shape, dtype): median of all repeats of all rounds},
    {(op, shape, dtype): (min, max) over rounds of the round's ratio of
    medians, fastnn / torch}, and the same for fastnn's fraction of the copy
    bandwidth (the op's bytes over its round median, against its copy's)."""
    pooled, per_round = {}, {}
    for res in worker_results:
        for row in res["rows"]:
            key = (res["framework"], row["op"], tuple(row["shape"]), row["dtype"])
            pooled.setdefault(key, []).extend(row["times"])
            per_round[key + (res.get("round", 1),)] = float(np.median(row["times"]))
    spread, of_copy = {}, {}
    for (fw, op, shape, dtype, rnd), f in per_round.items():
        t = per_round.get(("torch", op, shape, dtype, rnd))
        if fw == "fastnn" and t:
            spread.setdefault((op, shape, dtype), []).append(f / t)
        copy = per_round.get(("fastnn", "copyto/" + op, shape, dtype, rnd))
        if fw == "fastnn" and copy and op in PASSES:
            # bytes / f against (2 arrays) / copy
            of_copy.setdefault((op, shape, dtype), []).append(PASSES[op] * copy / (2 * f))
    return ({k: float(np.median(v)) for k, v in pooled.items()},
            {k: (min(v), max(v)) for k, v in spread.items()},
            {k: (min(v), max(v)) for k, v in of_copy.items()})


def table(combined, args):
    med, spread, of_copy = combined
    rows = []
    for dtype in args.dtypes:
        for n, d in args.sizes:
            for op in args.ops:
                copy = med.get(("fastnn", "copyto/" + op, (n, d), dtype))
                copy_gbs = 2 * n * d * np.dtype(dtype).itemsize / copy / 1e9 if copy else None
                mem = med.get(("fastnn", "copymem/" + op, (n, d), dtype))
                mem_gbs = 2 * n * d * np.dtype(dtype).itemsize / mem / 1e9 if mem else None
                f = med[("fastnn", op, (n, d), dtype)]
                t = med[("torch", op, (n, d), dtype)]
                b = op_bytes(op, n, d, dtype)
                rows.append({
                    "op": op, "shape": [n, d], "dtype": dtype, "fastnn_s": f, "torch_s": t, "ratio": f / t,
                    "ratio_rounds": list(spread.get((op, (n, d), dtype), (f / t, f / t))),
                    "bytes": b, "fastnn_gb_s": b / f / 1e9 if b else None,
                    "torch_gb_s": b / t / 1e9 if b else None,
                    "copyto_gb_s": copy_gbs if b else None,
                    "fastnn_of_copy": (b / f / 1e9) / copy_gbs if b and copy_gbs else None,
                    "mem_copy_gb_s": mem_gbs if b else None,
                    "mem_copy_pairs": copy_pairs(op) if b else None,
                    "fastnn_of_mem_copy": (b / f / 1e9) / mem_gbs if b and mem_gbs else None,
                    "of_copy_rounds": list(of_copy[(op, (n, d), dtype)]) if b and copy_gbs else None,
                })
    return rows


def fmt_time(s):
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def print_table(rows, args):
    head = (f"{'op':<17} {'shape':>10} {'dtype':>7} {'fastnn':>10} {'torch':>10} {'ratio':>6} {'rounds':>10} "
            f"{'fastnn GB/s':>11} {'torch GB/s':>10} {'copy GB/s':>9} {'of copy':>7} {'rounds':>9} "
            f"{'of mem copy':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        gb = "" if r["bytes"] is None else (
            f" {r['fastnn_gb_s']:>11.1f} {r['torch_gb_s']:>10.1f} {r['copyto_gb_s']:>9.1f} "
            f"{100 * r['fastnn_of_copy']:>6.0f}% "
            f"{100 * r['of_copy_rounds'][0]:>3.0f}-{100 * r['of_copy_rounds'][1]:<4.0f}% "
            f"{100 * r['fastnn_of_mem_copy']:>10.0f}%")
        print(f"{r['op']:<17} {'x'.join(map(str, r['shape'])):>10} {r['dtype']:>7} {fmt_time(r['fastnn_s']):>10} "
              f"{fmt_time(r['torch_s']):>10} {r['ratio']:>6.2f} "
              f"{r['ratio_rounds'][0]:>4.2f}-{r['ratio_rounds'][1]:<5.2f}{gb}")
    slower = sum(r["ratio"] > 1.05 for r in rows)
    print(f"forward + backward (an optimizer: one step()), median of {args.repeats} x {args.rounds} round(s) after {args.warmup} warm-up; "
          f"ratio = fastnn / torch (PyTorch faster where > 1: {slower} of {len(rows)} beyond 5%), "
          f"rounds = min-max over rounds of each round's ratio; "
          f"GB/s = bytes the op must move at least / time, of copy = that against np.copyto timed "
          f"right before the op (rounds: min-max over rounds), of mem copy = against a copy cycling "
          f"through as many array pairs as the op touches arrays (from memory, not L3); "
          f"threads {args.threads or 'default'}")


def parse_list(p, text, allowed, what):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        p.error(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return items


def parse_sizes(p, text):
    sizes = []
    for s in text.split(","):
        try:
            n, d = (int(v) for v in s.lower().split("x"))
        except ValueError:
            p.error(f"--sizes takes NxD,NxD,... (e.g. 1024x1024), got {s!r}")
        if n < 2 or d < 2:
            p.error(f"--sizes: N and D must be at least 2, got {s!r}")
        sizes.append((n, d))
    return sizes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated from {','.join(OPS)} (default: all)")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"input shapes NxD (default {','.join(SIZES)})")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="float32,float64 (default both)")
    p.add_argument("--repeats", type=int, default=25, help="timed repeats per round (default 25)")
    p.add_argument("--warmup", type=int, default=5, help="untimed repeats first (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of worker processes (default 2)")
    p.add_argument("--threads", type=int, default=None, help="threads for both frameworks (default: their own)")
    p.add_argument("--json", default=os.path.join("results", "vs_torch.json"), help="where to write the results")
    p.add_argument("--worker", choices=("fastnn", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.ops = parse_list(p, args.ops, OPS, "op(s)")
    args.dtypes = parse_list(p, args.dtypes, DTYPES, "dtype(s)")
    args.sizes = parse_sizes(p, args.sizes)
    for name in ("repeats", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error("--warmup must be >= 0 and --threads >= 1")
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    if importlib.util.find_spec("torch") is None:
        print("PyTorch is not installed: nothing to compare against (pip install torch); skipped.")
        return 0

    forward = ["--ops", ",".join(args.ops), "--dtypes", ",".join(args.dtypes),
               "--sizes", ",".join(f"{n}x{d}" for n, d in args.sizes),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.threads:
        forward += ["--threads", str(args.threads)]
    env = clean_environ(args.threads)
    results = []
    for rnd in range(args.rounds):
        for fw in ("fastnn", "torch"):
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", fw] + forward,
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{fw} worker failed (exit {proc.returncode})")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if fw == "torch" and res["imported_fastnn"] or fw == "fastnn" and res["imported_torch"]:
                raise SystemExit(f"the {fw} worker imported the other framework: not a clean process")
            res["round"] = rnd + 1
            results.append(res)
            print(f"round {rnd + 1}/{args.rounds} {fw}: done", flush=True)
    rows = table(combine(results), args)
    print()
    print_table(rows, args)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:] if argv is None else argv, "repeats": args.repeats,
                       "rounds": args.rounds, "threads": args.threads, "numpy": np.__version__,
                       "cpu_count": os.cpu_count(), "rows": rows, "workers": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
