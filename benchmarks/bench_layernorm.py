"""LayerNorm over the last axis of (N, D): numba vs NumPy, forward and backward."""

import numpy as np

from fastnn.kernels import layernorm as K
from fastnn.reference import layernorm as R

EPS = 1e-5


def _inputs(randn, case):
    d = case.shape[1]
    x = randn(*case.shape, scale=2.0) + case.dtype.type(0.5)
    gamma = (1 + 0.1 * randn(d)).astype(case.dtype)
    beta = randn(d, scale=0.1)
    return x, gamma, beta


def test_layernorm_forward(compare_and_time, randn, case):
    x, gamma, beta = _inputs(randn, case)
    n = case.shape[0]
    outputs = {"y": np.empty_like(x), "mean": np.empty(n, case.dtype), "rstd": np.empty(n, case.dtype)}
    compare_and_time("layernorm_forward", K.layernorm_forward, R.layernorm_forward, outputs,
                     (x, gamma, beta, EPS))


def test_layernorm_backward(compare_and_time, randn, case):
    x, gamma, beta = _inputs(randn, case)
    dy = randn(*case.shape)
    n, d = case.shape
    mean, rstd = np.empty(n, case.dtype), np.empty(n, case.dtype)
    R.layernorm_forward(np.empty_like(x), mean, rstd, x, gamma, beta, EPS)
    outputs = {"dx": np.empty_like(x), "dgamma": np.empty(d, case.dtype), "dbeta": np.empty(d, case.dtype)}
    compare_and_time("layernorm_backward", K.layernorm_backward, R.layernorm_backward, outputs,
                     (dy, x, mean, rstd, gamma))
