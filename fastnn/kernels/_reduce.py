"""Deterministic column sums over row chunks (batchnorm, layernorm), and the
row chunks themselves (BCE's per-row buffers).

Rows are split into fixed chunks, one per ``CHUNK_MIN_ROWS`` rows and at
most ``ROW_CHUNKS``; each chunk sums into its own float64 partial row (no
race under ``prange``), and the partials are added in chunk order, so the
result depends on N alone, not on the thread count. (Always 16 chunks made
a batch of 64 pay for 16 partial rows: BatchNorm's and LayerNorm's kernels
at (64, 256) 2-3 us slower. One chunk per 64 rows was faster still there,
but would leave 16 threads half idle in the chunked loops up to 1024 rows.)

Arrays are made with ``np.empty`` and zeroed by plain loops: under
``parallel=True`` numba turns every ``np.zeros`` into a parallel loop of
its own, a thread launch (~50 us) each; a BatchNorm forward of 1024x1024
float32 ran 2x slower than its serial build for that, even on one thread.
"""

import numpy as np

from .._config import jit_helper

ROW_CHUNKS = 16
CHUNK_MIN_ROWS = 16
# Rows summed in the input's dtype before adding into the float64 partials:
# float32 partial rows halve the memory traffic of the column sums (a
# LayerNorm backward of 1024x1024 float32: 504 -> 340 us, one thread), and
# 64 terms bound their rounding error to about 64 ulp of float32.
FLUSH_ROWS = 64


@jit_helper
def zero(a):
    """a[...] = 0 for a 1-D or 2-D array, without a parallel launch."""
    b = a.reshape(-1)
    for j in range(b.shape[0]):
        b[j] = 0


@jit_helper
def row_chunk_count(n):
    """Chunks of n rows: one per CHUNK_MIN_ROWS rows, at most ROW_CHUNKS."""
    return max(1, min(n // CHUNK_MIN_ROWS, ROW_CHUNKS))


@jit_helper
def chunk_partials(n, d):
    """Two zeroed (chunks, d) float64 arrays of partial column sums, one
    row per chunk of ``row_chunk_count``."""
    nchunks = row_chunk_count(n)
    p1 = np.empty((nchunks, d), dtype=np.float64)
    p2 = np.empty((nchunks, d), dtype=np.float64)
    zero(p1)
    zero(p2)
    return p1, p2


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
    t1 = np.empty(d, dtype=np.float64)
    t2 = np.empty(d, dtype=np.float64)
    zero(t1)
    zero(t2)
    for k in range(nchunks):
        for j in range(d):
            t1[j] += p1[k, j]
            t2[j] += p2[k, j]
    return t1, t2
