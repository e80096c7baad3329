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

from .._config import is_float64, jit_helper, kernel, same_data, typed
from ._reduce import FLUSH_ROWS, add_partials, chunk_partials, chunk_rows, flush, zero


# Serial cost per element of each kernel, (float32, float64), in units of
# 0.25 ns (measured one thread, 1024x1024, benchmarks/vs_torch.py's machine):
# ``functional`` passes ``work = size * cost``, so every kernel goes
# parallel at about the same serial time (PARALLEL_MIN_WORK units, ~130 us,
# against a ~50 us launch) instead of at the same element count.
# (float64 backward: 6.2 before its row pairs, 4.6 after, scaled by the
# measured 3.9-4.1 -> 2.9-3.0 of one thread on the same machine)
COST = {"layernorm_forward": (0.8, 1.6), "layernorm_backward": (1.4, 4.6)}


@jit_helper
def _layernorm_forward(y, mean, rstd, x, gamma, beta, eps):
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
def layernorm_forward(y, mean, rstd, x, gamma, beta, eps):
    """mean, rstd = 1/sqrt(var + eps) per row; y = (x - mean) * rstd * gamma + beta.

    One pass for the statistics: sums of (x - x[i, 0]) and its square in
    float64 (the shift keeps a large mean from cancelling the variance),
    then one pass writing y in x's dtype."""
    if same_data(y, x):  # in place: one array for both (see _config.same_data)
        _layernorm_forward(y, mean, rstd, y, gamma, beta, eps)
    else:
        _layernorm_forward(y, mean, rstd, x, gamma, beta, eps)


@jit_helper
def _dx_row(dx, dy, x, gamma, i, m, r, s1, s2):
    """Row i of dx from its dot products s1 = sum(g), s2 = sum(g * (x - m)):
    dx = k1 * g - k0 - (x - mean) * k2, g = dy * gamma."""
    d = x.shape[1]
    r64 = np.float64(r)
    k0 = typed(dx, r64 * s1 / d)
    k2 = typed(dx, r64 * r64 * r64 * s2 / d)
    for j in range(d):
        dx[i, j] = r * dy[i, j] * gamma[j] - k0 - (x[i, j] - m) * k2


@kernel
def layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma):
    """dgamma = sum_rows(dy * xhat), dbeta = sum_rows(dy),
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.

    Per row: one pass for the two dot products (float64) that also adds the
    row into the chunk's partial column sums, one pass that writes dx. (The
    sums in the dx pass made that pass's L1 working set 24 of 32 KiB; moved,
    the backward of (1024, 1024) float32 took 483 against 567 us, (4096,
    1024) 2.62 against 2.86 ms, interleaved.) float64 takes the first pass
    two rows at a time (``_rows_in_pairs``), so the partial sums are loaded
    and stored once per two rows: ``vs_torch.py --ops layernorm --dtypes
    float64``, three alternating runs of the code without and with, module
    forward + backward at (4096, 1024) 3.89-4.05 -> 3.57-3.69 ms; the
    kernel alone in one thread at (1024, 1024) 25% faster. float32 keeps
    one row: in pairs it ran slower (one-off script, (4096, 1024), 2
    threads, from memory: 1.21-1.45 against 0.92-1.32 ms)."""
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
        if is_float64(x):
            _rows_in_pairs(dx, dy, x, mean, rstd, gamma, i0, i1, pg[c], pb[c], ag, ab)
        else:
            _rows(dx, dy, x, mean, rstd, gamma, i0, i1, pg[c], pb[c], ag, ab)
        flush(pg[c], ag)
        flush(pb[c], ab)
    sg, sb = add_partials(pg, pb)
    for j in range(d):
        dgamma[j] = sg[j]
        dbeta[j] = sb[j]


@jit_helper
def _rows(dx, dy, x, mean, rstd, gamma, i0, i1, pg, pb, ag, ab):
    """Rows [i0, i1) of the backward one at a time; ag, ab: the running
    column sums in x's dtype, flushed into pg, pb every FLUSH_ROWS rows."""
    d = x.shape[1]
    for i in range(i0, i1):
        if (i - i0) % FLUSH_ROWS == 0 and i > i0:
            flush(pg, ag)
            flush(pb, ab)
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
        _dx_row(dx, dy, x, gamma, i, m, r, s1, s2)


@jit_helper
def _rows_in_pairs(dx, dy, x, mean, rstd, gamma, i0, i1, pg, pb, ag, ab):
    """As ``_rows``, the first pass two rows at a time (an odd last row alone)."""
    d = x.shape[1]
    for p in range((i1 - i0) // 2):
        i = i0 + 2 * p
        if (i - i0) % FLUSH_ROWS == 0 and i > i0:
            flush(pg, ag)
            flush(pb, ab)
        ma = mean[i]
        ra = rstd[i]
        mb = mean[i + 1]
        rb = rstd[i + 1]
        s1a = 0.0
        s2a = 0.0
        s1b = 0.0
        s2b = 0.0
        for j in range(d):
            dya = dy[i, j]
            dyb = dy[i + 1, j]
            ta = x[i, j] - ma
            tb = x[i + 1, j] - mb
            ga = dya * gamma[j]
            gb = dyb * gamma[j]
            s1a += ga
            s2a += ga * ta
            s1b += gb
            s2b += gb * tb
            ag[j] += dya * (ta * ra) + dyb * (tb * rb)
            ab[j] += dya + dyb
        _dx_row(dx, dy, x, gamma, i, ma, ra, s1a, s2a)
        _dx_row(dx, dy, x, gamma, i + 1, mb, rb, s1b, s2b)
    if (i1 - i0) % 2:
        _rows(dx, dy, x, mean, rstd, gamma, i1 - 1, i1, pg, pb, ag, ab)
