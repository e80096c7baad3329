"""Linear layer: y = x @ W + b.

Shapes: ``N`` batch, ``D`` in features, ``H`` out features.
``x: (N, D)``, ``W: (D, H)`` (the seed's layout), ``b: (H,)``, ``y: (N, H)``.
The matrix products go to BLAS through NumPy (``out=`` keeps them
allocation-free); the bias add and the bias gradient are numba kernels.
Gradients are overwritten, not accumulated.
"""

import numpy as np
from numba import prange

from .._config import jit_helper, kernel

# Columns per task in column reductions: each task owns its columns (no race)
# and walks rows in order (deterministic for any thread count).
COL_BLOCK = 64


@kernel
def bias_add(y, b):
    """y[i, :] += b, in place. y: (N, H), b: (H,)."""
    n, h = y.shape
    for i in prange(n):
        for j in range(h):
            y[i, j] += b[j]


@jit_helper
def column_sums(out, a):
    """out[j] = sum_i a[i, j] (float64 sums); parallel over column blocks
    when inlined into a parallel kernel."""
    n, h = a.shape
    nblocks = (h + COL_BLOCK - 1) // COL_BLOCK
    for blk in prange(nblocks):
        j0 = blk * COL_BLOCK
        j1 = min(j0 + COL_BLOCK, h)
        acc = np.zeros(j1 - j0, dtype=np.float64)
        for i in range(n):
            # Through the row slice: with a[i, j] and acc[j - j0], numba cannot
            # prove the indices non-negative, keeps its wraparound selects and
            # the loop does not vectorise (4-5x slower; same sums either way).
            row = a[i, j0:j1]
            for j in range(j1 - j0):
                acc[j] += row[j]
        for j in range(j1 - j0):
            out[j0 + j] = acc[j]


@kernel
def column_sum(out, a):
    """out[j] = sum_i a[i, j]. a: (N, H), out: (H,). Sums in float64."""
    column_sums(out, a)


def linear_forward(y, x, W, b):
    """y = x @ W + b (b may be None)."""
    np.matmul(x, W, out=y)
    if b is not None:
        bias_add(y, b, work=y.size)


def linear_backward(dx, dW, db, dy, x, W):
    """dW = x.T @ dy, db = dy.sum(0), dx = dy @ W.T.

    ``dx`` or ``db`` may be None to skip them (the first layer needs no dx).
    """
    np.matmul(x.T, dy, out=dW)
    if db is not None:
        column_sum(db, dy, work=dy.size)
    if dx is not None:
        np.matmul(dy, W.T, out=dx)
