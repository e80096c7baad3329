"""Layer normalisation over the last axis.

``x: (N, D)`` (``functional`` flattens leading axes into ``N``),
``gamma, beta: (D,)``, saved for the backward: ``mean, rstd: (N,)``.
Row statistics are accumulated in float64. The parameter gradients sum
over rows, in fixed row chunks with float64 partials added in chunk order
(``_reduce``), so the result does not depend on the thread count. Gradients are overwritten.
"""

import numpy as np
from numba import prange

from .._config import kernel
from ._reduce import add_partials, chunk_partials, chunk_rows


@kernel
def layernorm_forward(y, mean, rstd, x, gamma, beta, eps):
    """mean, rstd = 1/sqrt(var + eps) per row; y = (x - mean) * rstd * gamma + beta."""
    n, d = x.shape
    for i in prange(n):
        s = 0.0
        for j in range(d):
            s += x[i, j]
        m = s / d
        q = 0.0
        for j in range(d):
            t = x[i, j] - m
            q += t * t
        r = 1.0 / np.sqrt(q / d + eps)
        mean[i] = m
        rstd[i] = r
        for j in range(d):
            y[i, j] = (x[i, j] - m) * r * gamma[j] + beta[j]


@kernel
def layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma):
    """dgamma = sum_rows(dy * xhat), dbeta = sum_rows(dy),
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma."""
    n, d = x.shape
    pg, pb = chunk_partials(n, d)
    nchunks = pg.shape[0]
    for c in prange(nchunks):
        i0, i1 = chunk_rows(c, n, nchunks)
        for i in range(i0, i1):
            m = mean[i]
            r = rstd[i]
            s1 = 0.0
            s2 = 0.0
            for j in range(d):
                xhat = (x[i, j] - m) * r
                g = dy[i, j] * gamma[j]
                s1 += g
                s2 += g * xhat
                pg[c, j] += dy[i, j] * xhat
                pb[c, j] += dy[i, j]
            s1 /= d
            s2 /= d
            for j in range(d):
                xhat = (x[i, j] - m) * r
                dx[i, j] = r * (dy[i, j] * gamma[j] - s1 - xhat * s2)
    sg, sb = add_partials(pg, pb)
    for j in range(d):
        dgamma[j] = sg[j]
        dbeta[j] = sb[j]
