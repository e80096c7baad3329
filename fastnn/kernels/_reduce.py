"""Deterministic column sums over row chunks (batchnorm, layernorm).

Rows are split into ``min(N, ROW_CHUNKS)`` fixed chunks; each chunk sums
into its own float64 partial row (no race under ``prange``), and the
partials are added in chunk order, so the result does not depend on the
thread count.
"""

import numpy as np

from .._config import jit_helper

ROW_CHUNKS = 16
# Rows summed in the input's dtype before adding into the float64 partials:
# float32 partial rows halve the memory traffic of the column sums (a
# LayerNorm backward of 1024x1024 float32: 504 -> 340 us, one thread), and
# 64 terms bound their rounding error to about 64 ulp of float32.
FLUSH_ROWS = 64


@jit_helper
def chunk_partials(n, d):
    """Two zeroed (chunks, d) float64 arrays of partial column sums."""
    nchunks = min(n, ROW_CHUNKS)
    return np.zeros((nchunks, d), dtype=np.float64), np.zeros((nchunks, d), dtype=np.float64)


@jit_helper
def chunk_rows(c, n, nchunks):
    """The row range [i0, i1) of chunk c."""
    return c * n // nchunks, (c + 1) * n // nchunks


@jit_helper
def flush(total, part):
    """total += part (a float64 row), then part = 0."""
    for j in range(part.shape[0]):
        total[j] += part[j]
        part[j] = 0


@jit_helper
def add_partials(p1, p2):
    """The partial rows of p1 and of p2 summed in chunk order (float64)."""
    nchunks, d = p1.shape
    t1 = np.zeros(d, dtype=np.float64)
    t2 = np.zeros(d, dtype=np.float64)
    for k in range(nchunks):
        for j in range(d):
            t1[j] += p1[k, j]
            t2[j] += p2[k, j]
    return t1, t2
