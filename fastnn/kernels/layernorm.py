"""Layer normalisation over the last axis.

``x: (N, D)`` (``functional`` flattens leading axes into ``N``),
``gamma, beta: (D,)``, saved for the backward: ``mean, rstd: (N,)``.
Row statistics are accumulated in float64. The parameter gradients sum
over rows: rows are split into a fixed number of chunks, each chunk sums
into its own partial row, and the partials are added in chunk order, so the
result does not depend on the thread count. Gradients are overwritten.
"""

import numpy as np
from numba import prange

from .._config import kernel

ROW_CHUNKS = 16


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
    nchunks = min(n, ROW_CHUNKS)
    pg = np.zeros((nchunks, d), dtype=np.float64)
    pb = np.zeros((nchunks, d), dtype=np.float64)
    for c in prange(nchunks):
        i0 = c * n // nchunks
        i1 = (c + 1) * n // nchunks
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
    for j in range(d):
        sg = 0.0
        sb = 0.0
        for c in range(nchunks):
            sg += pg[c, j]
            sb += pb[c, j]
        dgamma[j] = sg
        dbeta[j] = sb
