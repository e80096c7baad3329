"""What a parallel kernel launch costs on each numba threading layer, and what a
BLAS product just before it does to it: the figures behind fastnn's choice of
layer and its two thread thresholds (fastnn/_config.py; docs/design.md, "The
threading layer").

    python benchmarks/thread_launch.py                      # tbb and workqueue
    python benchmarks/thread_launch.py --layers tbb,workqueue,omp --calls 300

Each layer runs in its own process (numba loads one threading layer per
process). fastnn is imported there only to make the ``tbb`` layer loadable
(``fastnn._config`` loads the ``tbb`` package's library); the kernels timed
are a plain ``prange`` ReLU, compiled serially and with ``parallel=True``,
not fastnn's. Per layer, microseconds, medians of ``--calls`` calls:

* a 64-element parallel ReLU, launches back to back, 1 ms and 20 ms after the
  previous one (a thread that slept must be woken);
* a 1M-element ReLU, serial and parallel;
* a 64x784x256 float32 product, back to back, and each right after a
  parallel launch;
* the serial and parallel ReLU right after such a product, at 65k, 262k, 1M
  and 4M elements (OpenBLAS's workers spin for a while after a product).

Timings on a shared machine are noisy: compare figures from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES_AFTER = (1 << 16, 1 << 18, 1 << 20, 1 << 22)


def run_worker(layer: str, calls: int) -> dict:
    sys.path.insert(0, ROOT)
    os.environ["FASTNN_THREADING_LAYER"] = layer
    import numpy as np
    import numba
    from numba import njit, prange

    import fastnn  # noqa: F401  (loads the tbb library where installed)

    @njit(parallel=True)
    def relu_parallel(x, y):
        for i in prange(x.size):
            v = x[i]
            y[i] = v if v > 0 else 0.0

    @njit
    def relu_serial(x, y):
        for i in range(x.size):
            v = x[i]
            y[i] = v if v > 0 else 0.0

    def median_us(fn, n=calls, gap=0.0, before=None):
        times = []
        for _ in range(n):
            if gap:
                time.sleep(gap)
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e6)

    rng = np.random.default_rng(0)
    small = rng.standard_normal(64).astype(np.float32)
    ys = np.empty_like(small)
    big = rng.standard_normal(1 << 20).astype(np.float32)
    yb = np.empty_like(big)
    a = rng.random((256, 784), dtype=np.float32)
    a64 = np.ascontiguousarray(a[:64])
    b = rng.random((784, 256), dtype=np.float32)
    relu_parallel(small, ys)
    relu_serial(small, ys)
    out = {"layer": numba.threading_layer(), "threads": numba.get_num_threads()}
    out["launch_back_to_back"] = median_us(lambda: relu_parallel(small, ys))
    out["launch_after_1ms"] = median_us(lambda: relu_parallel(small, ys), gap=1e-3)
    out["launch_after_20ms"] = median_us(lambda: relu_parallel(small, ys), n=max(calls // 5, 5), gap=2e-2)
    out["relu_1M_serial"] = median_us(lambda: relu_serial(big, yb))
    out["relu_1M_parallel"] = median_us(lambda: relu_parallel(big, yb))
    out["product_alone"] = median_us(lambda: a64 @ b)
    out["product_after_launch"] = median_us(lambda: a64 @ b, before=lambda: relu_parallel(big, yb))
    after = {}
    for n in SIZES_AFTER:
        x = rng.standard_normal(n).astype(np.float32)
        y = np.empty_like(x)
        after[str(n)] = {build: median_us(lambda f=f: f(x, y), before=lambda: a @ b)
                         for build, f in (("serial", relu_serial), ("parallel", relu_parallel))}
    out["relu_after_product"] = after
    return out


ROWS = (
    ("launch_back_to_back", "64 elements, launches back to back"),
    ("launch_after_1ms", "64 elements, 1 ms after the previous launch"),
    ("launch_after_20ms", "64 elements, 20 ms after"),
    ("relu_1M_serial", "1M elements, serial build"),
    ("relu_1M_parallel", "1M elements, parallel build"),
    ("product_alone", "64x784x256 product, back to back"),
    ("product_after_launch", "the product right after a 1M parallel launch"),
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--layers", default="tbb,workqueue", help="comma-separated from tbb,workqueue,omp")
    p.add_argument("--calls", type=int, default=200, help="timed calls per figure (default 200)")
    p.add_argument("--json", help="where to write the results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.calls < 1:
        p.error("--calls must be at least 1")
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.calls)))
        return 0
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    bad = [s for s in layers if s not in ("tbb", "workqueue", "omp")]
    if bad or not layers:
        p.error(f"--layers: unknown layer(s) {bad or layers}; choose from tbb, workqueue, omp")
    results = []
    for layer in layers:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTNN_", "NUMBA_THREADING"))}
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", layer,
                               "--calls", str(args.calls)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{layer}: not available here ({proc.stderr.strip().splitlines()[-1] if proc.stderr else 'failed'})")
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not results:
        print("no threading layer could be measured")
        return 1
    head = f"{'microseconds, median of ' + str(args.calls) + ' calls':<48}" + "".join(
        f"{r['layer'] + ' x' + str(r['threads']):>16}" for r in results)
    print(head)
    print("-" * len(head))
    for key, label in ROWS:
        print(f"{label:<48}" + "".join(f"{r[key]:>16.1f}" for r in results))
    print("ReLU right after a 256x784x256 product, serial / parallel:")
    for n in SIZES_AFTER:
        cells = "".join(f"{r['relu_after_product'][str(n)]['serial']:>7.0f} /{r['relu_after_product'][str(n)]['parallel']:>7.0f}"
                        for r in results)
        print(f"{'  ' + str(n) + ' elements':<48}" + cells)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"calls": args.calls, "cpu_count": os.cpu_count(), "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
