"""Batch normalisation over the batch axis of ``x: (N, D)``.

``N`` batch, ``D`` features. Training mode normalises with the batch's
mean and biased variance and saves ``mean: (D,)`` and ``rstd: (D,)``
(1 / sqrt(var + eps)) for the backward; the running statistics are updated
by the caller (``functional.batchnorm``). Eval mode uses the running ones.
Statistics are accumulated in float64. Each task owns a block of columns
and walks the rows in order: no race, same result for any thread count.
Gradients are overwritten.
"""

import numpy as np
from numba import prange

from .._config import kernel

COL_BLOCK = 64


@kernel
def batchnorm_forward(y, mean, var, rstd, x, gamma, beta, eps):
    """Training: mean, var (biased), rstd = 1/sqrt(var + eps) over axis 0;
    y = (x - mean) * rstd * gamma + beta."""
    n, d = x.shape
    nblocks = (d + COL_BLOCK - 1) // COL_BLOCK
    for blk in prange(nblocks):
        j0 = blk * COL_BLOCK
        j1 = min(j0 + COL_BLOCK, d)
        w = j1 - j0
        s = np.zeros(w, dtype=np.float64)
        for i in range(n):
            for j in range(w):
                s[j] += x[i, j0 + j]
        for j in range(w):
            s[j] /= n
        q = np.zeros(w, dtype=np.float64)
        for i in range(n):
            for j in range(w):
                t = x[i, j0 + j] - s[j]
                q[j] += t * t
        for j in range(w):
            v = q[j] / n
            r = 1.0 / np.sqrt(v + eps)
            mean[j0 + j] = s[j]
            var[j0 + j] = v
            rstd[j0 + j] = r
            # scale and shift folded into y = x * a + c
            q[j] = r * gamma[j0 + j]
            s[j] = beta[j0 + j] - s[j] * q[j]
        for i in range(n):
            for j in range(w):
                y[i, j0 + j] = x[i, j0 + j] * q[j] + s[j]


@kernel
def batchnorm_forward_eval(y, x, running_mean, running_var, gamma, beta, eps):
    """Eval: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    n, d = x.shape
    a = np.empty(d, dtype=x.dtype)
    c = np.empty(d, dtype=x.dtype)
    for j in range(d):
        r = 1.0 / np.sqrt(running_var[j] + eps)
        a[j] = r * gamma[j]
        c[j] = beta[j] - running_mean[j] * r * gamma[j]
    for i in prange(n):
        for j in range(d):
            y[i, j] = x[i, j] * a[j] + c[j]


@kernel
def batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma):
    """dbeta = sum(dy), dgamma = sum(dy * xhat),
    dx = gamma * rstd / N * (N dy - dbeta - xhat * dgamma), xhat = (x - mean) * rstd."""
    n, d = x.shape
    nblocks = (d + COL_BLOCK - 1) // COL_BLOCK
    for blk in prange(nblocks):
        j0 = blk * COL_BLOCK
        j1 = min(j0 + COL_BLOCK, d)
        w = j1 - j0
        sb = np.zeros(w, dtype=np.float64)
        sg = np.zeros(w, dtype=np.float64)
        for i in range(n):
            for j in range(w):
                g = dy[i, j0 + j]
                sb[j] += g
                sg[j] += g * (x[i, j0 + j] - mean[j0 + j]) * rstd[j0 + j]
        for j in range(w):
            dbeta[j0 + j] = sb[j]
            dgamma[j0 + j] = sg[j]
        for i in range(n):
            for j in range(w):
                jj = j0 + j
                xhat = (x[i, jj] - mean[jj]) * rstd[jj]
                dx[i, jj] = gamma[jj] * rstd[jj] / n * (n * dy[i, jj] - sb[j] - xhat * sg[j])
