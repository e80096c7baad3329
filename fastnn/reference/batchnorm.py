"""NumPy reference for ``fastnn.kernels.batchnorm`` (same names, same signatures)."""

import numpy as np


def batchnorm_forward(y, mean, var, rstd, x, gamma, beta, eps):
    mean[...] = x.mean(axis=0)
    var[...] = x.var(axis=0)
    rstd[...] = 1 / np.sqrt(var + eps)
    y[...] = (x - mean) * rstd * gamma + beta


def blend_running(running, batch, momentum):
    running *= 1 - momentum
    running += momentum * batch


def batchnorm_forward_eval(y, x, running_mean, running_var, gamma, beta, eps):
    y[...] = (x - running_mean) / np.sqrt(running_var + eps) * gamma + beta


def batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma):
    n = x.shape[0]
    xhat = (x - mean) * rstd
    dbeta[...] = dy.sum(axis=0)
    dgamma[...] = (dy * xhat).sum(axis=0)
    dx[...] = gamma * rstd / n * (n * dy - dbeta - xhat * dgamma)
