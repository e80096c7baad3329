"""BatchNorm over the batch axis of (N, D): numba vs NumPy, training
forward, eval forward and backward."""

import numpy as np

from fastnn.kernels import batchnorm as K
from fastnn.reference import batchnorm as R

EPS = 1e-5


def _params(randn, rng, case):
    d = case.shape[1]
    gamma = (1 + 0.1 * randn(d)).astype(case.dtype)
    beta = randn(d, scale=0.1)
    return gamma, beta


def _stats(case):
    d = case.shape[1]
    return {name: np.empty(d, case.dtype) for name in ("mean", "var", "rstd")}


def test_batchnorm_forward(compare_and_time, randn, rng, case):
    x = randn(*case.shape, scale=2.0) + case.dtype.type(0.5)
    gamma, beta = _params(randn, rng, case)
    outputs = {"y": np.empty_like(x), **_stats(case)}
    compare_and_time("batchnorm_forward", K.batchnorm_forward, R.batchnorm_forward, outputs,
                     (x, gamma, beta, EPS))


def test_batchnorm_forward_eval(compare_and_time, randn, rng, case):
    x = randn(*case.shape)
    gamma, beta = _params(randn, rng, case)
    d = case.shape[1]
    running_mean = randn(d, scale=0.1)
    running_var = (1 + rng.random(d)).astype(case.dtype)
    compare_and_time("batchnorm_forward_eval", K.batchnorm_forward_eval, R.batchnorm_forward_eval,
                     {"y": np.empty_like(x)}, (x, running_mean, running_var, gamma, beta, EPS))


def test_batchnorm_backward(compare_and_time, randn, rng, case):
    x = randn(*case.shape, scale=2.0) + case.dtype.type(0.5)
    dy = randn(*case.shape)
    gamma, beta = _params(randn, rng, case)
    stats = _stats(case)
    R.batchnorm_forward(np.empty_like(x), *stats.values(), x, gamma, beta, EPS)
    d = case.shape[1]
    outputs = {"dx": np.empty_like(x), "dgamma": np.empty(d, case.dtype), "dbeta": np.empty(d, case.dtype)}
    compare_and_time("batchnorm_backward", K.batchnorm_backward, R.batchnorm_backward, outputs,
                     (dy, x, stats["mean"], stats["rstd"], gamma))
