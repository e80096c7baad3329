"""Layer normalisation over the last axis.

``x: (N, D)`` (``functional`` flattens leading axes into ``N``),
``gamma, beta: (D,)``, saved for the backward: ``mean, rstd: (N,)``.
Row statistics and the backward's row dot products are accumulated in
float64. The parameter gradients sum over rows, in fixed row chunks
(runs of ``FLUSH_ROWS`` rows in x's dtype, flushed into float64 partials,
added in chunk order: ``_reduce``), so the result does not depend on the
thread count. Gradients are overwritten. Each kernel reads a row twice
while it is in L1 and the rest of memory once.
"""

import numpy as np
from numba import prange

from .._config import kernel, typed
from ._reduce import FLUSH_ROWS, add_partials, chunk_partials, chunk_rows, flush, zero


# Serial cost per element of each kernel, (float32, float64), in units of
# 0.25 ns (measured one thread, 1024x1024, benchmarks/vs_torch.py's machine):
# ``functional`` passes ``work = size * cost``, so every kernel goes
# parallel at about the same serial time (PARALLEL_MIN_WORK units, ~130 us,
# against a ~50 us launch) instead of at the same element count.
COST = {"layernorm_forward": (0.8, 1.6), "layernorm_backward": (1.4, 6.2)}


@kernel
def layernorm_forward(y, mean, rstd, x, gamma, beta, eps):
    """mean, rstd = 1/sqrt(var + eps) per row; y = (x - mean) * rstd * gamma + beta.

    One pass for the statistics: sums of (x - x[i, 0]) and its square in
    float64 (the shift keeps a large mean from cancelling the variance),
    then one pass writing y in x's dtype."""
    n, d = x.shape
    for i in prange(n):
        x0 = np.float64(x[i, 0])
        s1 = 0.0
        s2 = 0.0
        for j in range(d):
            t = x[i, j] - x0
            s1 += t
            s2 += t * t
        dm = s1 / d
        var = max(s2 / d - dm * dm, 0.0)
        r = 1.0 / np.sqrt(var + eps)
        mean[i] = x0 + dm
        rstd[i] = r
        m = mean[i]
        rt = rstd[i]
        for j in range(d):
            y[i, j] = (x[i, j] - m) * rt * gamma[j] + beta[j]


@kernel
def layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma):
    """dgamma = sum_rows(dy * xhat), dbeta = sum_rows(dy),
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.

    Per row: one pass for the two dot products (float64) that also adds the
    row into the chunk's partial column sums, one pass that writes dx. (The
    sums in the dx pass made that pass's L1 working set 24 of 32 KiB; moved,
    the backward of (1024, 1024) float32 took 483 against 567 us, (4096,
    1024) 2.62 against 2.86 ms, interleaved.)"""
    n, d = x.shape
    pg, pb = chunk_partials(n, d)
    nchunks = pg.shape[0]
    for c in prange(nchunks):
        i0, i1 = chunk_rows(c, n, nchunks)
        # column sums of up to FLUSH_ROWS rows in x's dtype, then into float64
        ag = np.empty(d, dtype=x.dtype)
        ab = np.empty(d, dtype=x.dtype)
        zero(ag)
        zero(ab)
        for i in range(i0, i1):
            if (i - i0) % FLUSH_ROWS == 0 and i > i0:
                flush(pg[c], ag)
                flush(pb[c], ab)
            m = mean[i]
            r = rstd[i]
            s1 = 0.0
            s2 = 0.0
            for j in range(d):
                dyv = dy[i, j]
                t = x[i, j] - m
                g = dyv * gamma[j]
                s1 += g
                s2 += g * t
                ag[j] += dyv * (t * r)
                ab[j] += dyv
            r64 = np.float64(r)
            # dx = k1 * g - k0 - (x - mean) * k2
            k0 = typed(dx, r64 * s1 / d)
            k2 = typed(dx, r64 * r64 * r64 * s2 / d)
            for j in range(d):
                dx[i, j] = r * dy[i, j] * gamma[j] - k0 - (x[i, j] - m) * k2
        flush(pg[c], ag)
        flush(pb[c], ab)
    sg, sb = add_partials(pg, pb)
    for j in range(d):
        dgamma[j] = sg[j]
        dbeta[j] = sb[j]
