"""Where a training step's time goes, and whether the matrix products run as
fast inside fastnn's compiled step as alone.

    python benchmarks/step_parts.py                          # batch 64, 256, 1024; 5 rounds
    python benchmarks/step_parts.py --batch-sizes 256 --rounds 7

The seed's network (784-256 ReLU Dropout(0.2) - 128 ReLU Dropout(0.2) - 10,
softmax cross-entropy, Adam, float32) is trained for one epoch first, so that
the timed epochs run on real state (Adam's moments, the weights). Then, per
batch size, three kinds of epoch in interleaved rounds, all in this process:

* **step**: what ``fit`` runs per batch, split by timers: the batch gather
  (``np.take`` of the rows and labels), the compiled forward + backward
  (``fastnn/_step.py``), the loss and the training accuracy (counted in the
  compiled forward) as ``fit`` reads them, Adam's update.
* **step without products**: the same, its matrix products replaced by a
  function with cblas_?gemm's signature that does nothing (a numba
  ``cfunc``): what the compiled forward + backward costs besides them (the
  bias, activation, Dropout and loss kernels, and the calls). A product's
  output keeps the previous real step's values, so the kernels see real
  numbers.
* **products alone**: the step's 8 products (3 forward, 3 weight-gradient,
  2 input-gradient) through ``np.matmul`` on arrays of the same shapes,
  back to back: the GEMM floor of ``mnist_speed.py`` (its ``GemmFloor``), here in
  this process.

*products in step* = forward + backward of the step minus that of the step
without products. The kernels run with less cache traffic without the
products, so this overstates the products' share a little: a ratio to
*products alone* near 1 means the products run inside the step as fast as
alone. Seconds an epoch (60,000 rows), median over rounds with min-max.
Timings on a shared machine are noisy: compare figures from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from mnist_speed import LAYERS, GemmFloor  # noqa: E402  (the floor's 8 products, same shapes)

PARTS = ("gather", "forward_backward", "loss_accuracy", "adam")


def positive_ints(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def load_data(dataset, rows):
    from fastnn import data

    if dataset != "synthetic":
        for kind in (["mnist", "fashion"] if dataset == "auto" else [dataset]):
            try:
                (X, y), _ = data.load_mnist(kind=kind)
            except FileNotFoundError:
                continue
            return X[:rows], y[:rows], {"mnist": "MNIST", "fashion": "Fashion-MNIST"}[kind]
        if dataset != "auto":
            raise SystemExit(f"no {dataset} data found (see fastnn.data.load_mnist)")
    (X, y), _ = data.synthetic_mnist(n_train=rows, n_test=1)
    return X, y, "synthetic MNIST-shaped data (no MNIST/Fashion-MNIST found)"


def noop_gemm(dtype, wide):
    """The address of a C function with cblas_?gemm's arguments that does nothing."""
    from numba import cfunc, types

    integer = types.int64 if wide else types.int32
    real = types.float32 if dtype == np.float32 else types.float64
    i32, ptr = types.int32, types.voidptr
    sig = types.void(i32, i32, i32, integer, integer, integer, real, ptr, integer, ptr, integer, real,
                     ptr, integer)

    @cfunc(sig)
    def gemm_that_does_nothing(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        pass

    return gemm_that_does_nothing, gemm_that_does_nothing.address


def measure(batch, X, y, rounds, steps, seed):
    import fastnn
    from fastnn import _step, nn, optim

    fastnn.manual_seed(seed)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)])
    loss_fn = nn.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    fastnn.fit(model, loss_fn, opt, X, y, epochs=1, batch_size=batch, seed=seed, progress=False)
    program = _step.SequentialProgram.build(model, loss_fn, X)
    if program is None or not program.serial_at(batch):
        raise SystemExit(f"batch {batch}: the compiled step does not apply here "
                         f"({_step.SequentialProgram.why_not or 'it would run kernels in parallel'})")
    real_gemm = program.gemm_fn
    keep_alive, fake_gemm = noop_gemm(program.dtype, program.wide)
    rng = np.random.default_rng(seed)
    floor = GemmFloor(LAYERS)
    n_steps = min(steps, len(X) // batch)
    scale = (60000 // batch) / n_steps  # seconds per 60,000-row epoch

    def step_epoch(gemm_fn):
        t = dict.fromkeys(PARTS, 0.0)
        order = rng.permutation(len(X))
        clock = time.perf_counter
        program.gemm_fn = gemm_fn
        try:
            for s in range(n_steps):
                t0 = clock()
                idx = order[s * batch:(s + 1) * batch]
                xb, yb = program.batch(batch)
                np.take(X, idx, axis=0, out=xb, mode="clip")
                np.take(y, idx, axis=0, out=yb, mode="clip")
                t1 = clock()
                program.forward(batch, keep_state=False)
                t2 = clock()
                program.loss()
                program.correct()  # fit's training accuracy
                t3 = clock()
                program.backward()
                t4 = clock()
                opt.step()
                t5 = clock()
                t["gather"] += t1 - t0
                t["forward_backward"] += (t2 - t1) + (t4 - t3)
                t["loss_accuracy"] += t3 - t2
                t["adam"] += t5 - t4
        finally:
            program.gemm_fn = real_gemm
        return {k: v * scale for k, v in t.items()}

    def products_epoch():
        t0 = time.perf_counter()
        for _ in range(n_steps):
            floor.step(batch)
        return (time.perf_counter() - t0) * scale

    step_epoch(real_gemm), step_epoch(fake_gemm), products_epoch()  # warm up
    rows = []
    for r in range(rounds):
        full = step_epoch(real_gemm)
        bare = step_epoch(fake_gemm)
        alone = products_epoch()
        rows.append(dict(round=r + 1, step=full, step_without_products=bare, products_alone=alone,
                         products_in_step=full["forward_backward"] - bare["forward_backward"]))
        print(f"batch {batch} round {r + 1}/{rounds}: step {sum(full.values()):.3f} s, products in step "
              f"{rows[-1]['products_in_step']:.3f}, alone {alone:.3f}", flush=True)
    del keep_alive
    return rows


def summary(rows):
    def stat(values):
        return dict(median=float(np.median(values)), min=float(min(values)), max=float(max(values)))

    out = {"products_alone": stat([r["products_alone"] for r in rows]),
           "products_in_step": stat([r["products_in_step"] for r in rows]),
           "in_step_over_alone": stat([r["products_in_step"] / r["products_alone"] for r in rows]),
           "kernels_and_calls": stat([r["step_without_products"]["forward_backward"] for r in rows]),
           "step_total": stat([sum(r["step"].values()) for r in rows])}
    for part in ("gather", "loss_accuracy", "adam"):
        out[part] = stat([r["step"][part] for r in rows])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=positive_ints, default=[64, 256, 1024],
                   help="comma-separated batch sizes (default 64,256,1024)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--steps", type=positive_int, default=10 ** 9,
                   help="steps per timed epoch, at most a full epoch (default: a full epoch); "
                        "times are scaled to 60,000 rows")
    p.add_argument("--dataset", choices=("auto", "mnist", "fashion", "synthetic"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(ROOT, "results", "step_parts.json"),
                   help="where to write the results (default results/step_parts.json)")
    args = p.parse_args(argv)
    if args.seed < 0:
        p.error(f"--seed must be non-negative, got {args.seed}")

    X, y, name = load_data(args.dataset, 60000)
    too_big = [b for b in args.batch_sizes if b > len(X)]
    if too_big:
        p.error(f"--batch-sizes {too_big} exceed the {len(X)} training rows")
    print(f"data: {name}; {args.rounds} interleaved rounds per batch size", flush=True)
    results = {}
    for batch in args.batch_sizes:
        rows = measure(batch, X, y, args.rounds, args.steps, args.seed)
        results[batch] = dict(rounds=rows, summary=summary(rows))

    print()
    print("seconds per 60,000-row epoch: median over rounds (min-max)")
    head = ("batch", "products alone", "products in step", "in step / alone", "other kernels + calls",
            "gather", "loss + accuracy", "Adam", "step total")
    print(" | ".join(head))
    for batch, res in results.items():
        s = res["summary"]
        cell = lambda k, f="{:.3f}": (f.format(s[k]["median"]) + " (" + f.format(s[k]["min"]) + "-"
                                      + f.format(s[k]["max"]) + ")")
        print(" | ".join([str(batch), cell("products_alone"), cell("products_in_step"),
                          cell("in_step_over_alone", "{:.2f}"), cell("kernels_and_calls"), cell("gather"),
                          cell("loss_accuracy"), cell("adam"), cell("step_total")]))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"data": name, "rounds": args.rounds,
                       "results": {str(b): r for b, r in results.items()}}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
