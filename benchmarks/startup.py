"""Time from a new process to its first trained step, warm and cold.

    python benchmarks/startup.py           # warm cache (run it twice), then cold
    python benchmarks/startup.py --runs 3

Each run is a fresh interpreter that imports fastnn, builds the seed's MNIST
network with Adam and trains one step at batch 64 on random data. "cold" points
numba at an empty cache directory, so the step compiles every kernel it needs.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

STEP = """
import numpy as np
import fastnn
from fastnn import nn, optim
m = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                   nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)])
ce = nn.SoftmaxCrossEntropy()
opt = optim.Adam(m.parameters(), lr=1e-3)
x = np.random.rand(64, 784).astype(np.float32)
y = np.arange(64) % 10
out = m.forward(x)
ce.forward(out, y)
m.backward(ce.backward(), need_input_grad=False)
opt.step()
import time
print(time.time())
"""


def run(env):
    """Seconds from launching the process to the end of its first step."""
    t = time.time()
    out = subprocess.run([sys.executable, "-c", STEP], check=True, env=env,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1]) - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="warm runs (default 3)")
    args = p.parse_args(argv)
    run(dict(os.environ))  # fill the cache
    warm = sorted(run(dict(os.environ)) for _ in range(args.runs))
    with tempfile.TemporaryDirectory() as cache:
        cold = run(dict(os.environ, NUMBA_CACHE_DIR=cache))
    print(f"process start to first trained step: warm {warm[len(warm) // 2]:.2f} s "
          f"(median of {args.runs}), cold {cold:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
