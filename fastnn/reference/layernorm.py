"""NumPy reference for ``fastnn.kernels.layernorm`` (same names, same signatures)."""

import numpy as np


def layernorm_forward(y, mean, rstd, x, gamma, beta, eps):
    mean[...] = x.mean(axis=1)
    rstd[...] = 1 / np.sqrt(x.var(axis=1) + eps)
    y[...] = (x - mean[:, None]) * rstd[:, None] * gamma + beta


def layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma):
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy * gamma
    dgamma[...] = (dy * xhat).sum(axis=0)
    dbeta[...] = dy.sum(axis=0)
    dx[...] = rstd[:, None] * (
        g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True)
    )
