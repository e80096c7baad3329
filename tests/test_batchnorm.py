"""fastnn.kernels.batchnorm against fastnn.reference.batchnorm, the reference
against finite differences, and the running statistics against the seed."""

import numpy as np
import pytest

from fastnn import functional as F
from fastnn import nn
from fastnn.kernels import batchnorm as K
from fastnn.reference import batchnorm as R

from _helpers import (BIG, DTYPE_IDS, DTYPES, assert_grad_close, backends, numeric_grad,
                      randn, rng_for, run_both)

# Training needs N >= 2; N = 1 is covered in eval mode below.
TRAIN_SHAPES = ((2, 5), (3, 7), (5, 33), (64, 784))


def _inputs(shape, dtype):
    rng = rng_for("bn", shape, np.dtype(dtype).name)
    d = shape[1]
    x = randn(rng, shape, dtype, 2.0) + randn(rng, (d,), dtype)
    gamma = (1 + 0.5 * rng.standard_normal(d)).astype(dtype)
    beta = randn(rng, (d,), dtype)
    dy = randn(rng, shape, dtype)
    rm = randn(rng, (d,), dtype)
    rv = rng.uniform(0.5, 2.0, d).astype(dtype)
    return x, gamma, beta, dy, rm, rv


def _check(shape, dtype):
    x, gamma, beta, dy, rm, rv = _inputs(shape, dtype)

    def train(backend):
        def call(x, gamma, beta, rm, rv):
            y, mean, rstd = F.batchnorm(x, gamma, beta, eps=1e-5, training=True, running_mean=rm,
                                        running_var=rv, momentum=0.1, backend=backend)
            return y, mean, rstd, rm, rv
        return call

    (y, mean, rstd, rm_new, rv_new), _ = run_both(
        train("numba"), train("numpy"), lambda: (x, gamma, beta, rm.copy(), rv.copy()),
        names=["y", "mean", "rstd", "running_mean", "running_var"], updated=(3, 4))
    for a in (y, mean, rstd, rm_new, rv_new):
        assert a.dtype == dtype
    grads, _ = run_both(*backends(F.batchnorm_backward), lambda: (dy, x, mean, rstd, gamma),
                        names=["dx", "dgamma", "dbeta"], scale=5.0)
    for g in grads:
        assert g.dtype == dtype

    def evaluate(backend):
        return lambda x, gamma, beta, rm, rv: F.batchnorm(
            x, gamma, beta, training=False, running_mean=rm, running_var=rv, backend=backend)[0]

    (y_eval,), _ = run_both(evaluate("numba"), evaluate("numpy"), lambda: (x, gamma, beta, rm, rv),
                            names=["y (eval)"])
    assert y_eval.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", TRAIN_SHAPES)
def test_forward_and_backward_match_reference(shape, dtype):
    _check(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_matches_reference(dtype):
    _check(BIG, dtype)


@pytest.mark.parametrize("shape", [(63, 5), (1000, 17), (2100, 9)])
def test_row_chunks_with_remainders_match_reference(shape):
    # row chunks of 3-4, 62-63 and 131-132 rows: the kernels sum four rows at a time
    # within runs of FLUSH_ROWS, and these leave rows over at both levels
    _check(shape, np.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernels_called_directly_match_reference(dtype):
    x, gamma, beta, dy, rm, rv = _inputs((5, 33), dtype)
    d = x.shape[1]
    (y, mean, var, rstd), _ = run_both(
        K.batchnorm_forward, R.batchnorm_forward,
        lambda: (np.empty_like(x), np.empty(d, dtype), np.empty(d, dtype), np.empty(d, dtype),
                 x, gamma, beta, 1e-5),
        names=["y", "mean", "var", "rstd"], n_out=4)
    run_both(K.batchnorm_forward_eval, R.batchnorm_forward_eval,
             lambda: (np.empty_like(x), x, rm, rv, gamma, beta, 1e-5), names=["y"], n_out=1)
    run_both(K.batchnorm_backward, R.batchnorm_backward,
             lambda: (np.empty_like(x), np.empty(d, dtype), np.empty(d, dtype), dy, x, mean, rstd, gamma),
             names=["dx", "dgamma", "dbeta"], n_out=3, scale=5.0)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_training_statistics_and_running_update_follow_the_seed(backend):
    x, gamma, beta, _, rm, rv = _inputs((16, 9), np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    momentum, eps = 0.3, 1e-3
    y, mean, rstd = F.batchnorm(x, gamma, beta, eps=eps, running_mean=rm, running_var=rv,
                                momentum=momentum, backend=backend)
    bmean, bvar = x.mean(axis=0), x.var(axis=0)  # biased variance, as in the seed
    np.testing.assert_allclose(mean, bmean, rtol=1e-12)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(bvar + eps), rtol=1e-12)
    np.testing.assert_allclose(y, gamma * (x - bmean) / np.sqrt(bvar + eps) + beta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rm, (1 - momentum) * rm0 + momentum * bmean, rtol=1e-12)
    np.testing.assert_allclose(rv, (1 - momentum) * rv0 + momentum * bvar, rtol=1e-12)
    # normalised output has zero mean and unit variance per feature (gamma=1, beta=0)
    y1, _, _ = F.batchnorm(x, np.ones(9), np.zeros(9), eps=1e-12, backend=backend)
    np.testing.assert_allclose(y1.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y1.var(axis=0), 1, rtol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_running_blend_kernel_agrees_with_numpys_in_place_ops(dtype):
    """The running statistics' update, a kernel, agrees with NumPy's
    ``running *= 1 - momentum; running += momentum * batch`` to one rounding
    (the kernel may fuse the multiply-add); only the running arrays that are
    given are updated."""
    rng = np.random.default_rng(5)
    batch = rng.standard_normal(37).astype(dtype)
    for momentum in (0.1, 0.3, 1 / 3, 0.0, 1.0):
        run0 = rng.standard_normal(37).astype(dtype)
        run_k, run_r = run0.copy(), run0.copy()
        K.blend_running(run_k, batch, momentum)
        R.blend_running(run_r, batch, momentum)
        # one rounding of the terms' size (the sum may cancel)
        terms = np.abs(run0 * dtype(1 - momentum)) + np.abs(dtype(momentum) * batch)
        assert np.all(np.abs(run_k - run_r) <= np.finfo(dtype).eps * terms), momentum
    x, gamma, beta, _, rm, rv = _inputs((16, 9), dtype)
    rv0 = rv.copy()
    F.batchnorm(x, gamma, beta, running_mean=rm, running_var=None, momentum=0.2)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_momentum_extremes(backend):
    x, gamma, beta, _, rm, rv = _inputs((8, 5), np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    F.batchnorm(x, gamma, beta, running_mean=rm, running_var=rv, momentum=0.0, backend=backend)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    F.batchnorm(x, gamma, beta, running_mean=rm, running_var=rv, momentum=1.0, backend=backend)
    np.testing.assert_allclose(rm, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rv, x.var(axis=0), rtol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_eval_uses_running_statistics_and_works_with_one_sample(dtype, backend):
    x, gamma, beta, _, rm, rv = _inputs((1, 7), dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, rstd = F.batchnorm(x, gamma, beta, eps=1e-5, training=False, running_mean=rm,
                                running_var=rv, backend=backend)
    assert mean is None and rstd is None and y.dtype == dtype
    expect = (x.astype(np.float64) - rm) / np.sqrt(rv.astype(np.float64) + 1e-5) * gamma + beta
    np.testing.assert_allclose(y, expect, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    np.testing.assert_array_equal(rm, rm0)  # eval does not touch the running stats
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_training_with_one_sample_raises(backend):
    x, gamma, beta, _, rm, rv = _inputs((1, 7), np.float32)
    with pytest.raises(ValueError, match="more than 1 sample"):
        F.batchnorm(x, gamma, beta, training=True, running_mean=rm, running_var=rv, backend=backend)
    bn = nn.BatchNorm(7)
    bn.backend = backend
    with pytest.raises(ValueError, match="more than 1 sample"):
        bn.forward(x, training=True)
    assert bn.forward(x, training=False).shape == (1, 7)


def test_module_running_stats_update_as_in_the_seed():
    """nn.BatchNorm against the seed's class, step by step."""
    rng = rng_for("bn-seed")
    bn = nn.BatchNorm(6, eps=1e-5, momentum=0.2, dtype=np.float64)
    rmean, rvar = np.zeros(6), np.ones(6)
    for _ in range(3):
        x = rng.standard_normal((10, 6)) * 3 + 1
        y = bn.forward(x, training=True)
        mean, var = x.mean(axis=0), x.var(axis=0)
        rmean = 0.8 * rmean + 0.2 * mean
        rvar = 0.8 * rvar + 0.2 * var
        np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, rmean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rvar, rtol=1e-12)
    x = rng.standard_normal((4, 6))
    np.testing.assert_allclose(bn.forward(x, training=False), (x - rmean) / np.sqrt(rvar + 1e-5),
                               rtol=1e-10, atol=1e-12)


def test_reference_backward_matches_finite_differences():
    rng = rng_for("bn-fd")
    x = rng.standard_normal((5, 4)) * 2 + 1
    gamma = 1 + 0.3 * rng.standard_normal(4)
    beta = rng.standard_normal(4)
    dy = rng.standard_normal((5, 4))
    eps = 1e-5

    def forward():
        y, mean, var, rstd = np.empty_like(x), np.empty(4), np.empty(4), np.empty(4)
        R.batchnorm_forward(y, mean, var, rstd, x, gamma, beta, eps)
        return y, mean, rstd

    def loss():
        return float((forward()[0] * dy).sum())

    _, mean, rstd = forward()
    dx, dgamma, dbeta = np.empty_like(x), np.empty(4), np.empty(4)
    R.batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma)
    assert_grad_close(dx, numeric_grad(loss, x), "dx")
    assert_grad_close(dgamma, numeric_grad(loss, gamma), "dgamma")
    assert_grad_close(dbeta, numeric_grad(loss, beta), "dbeta")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_constant_feature_is_finite(backend):
    x = np.ones((4, 3), np.float32)
    y, mean, rstd = F.batchnorm(x, np.ones(3, np.float32), np.zeros(3, np.float32), backend=backend)
    dx, dg, db = F.batchnorm_backward(np.ones_like(x), x, mean, rstd, np.ones(3, np.float32),
                                      backend=backend)
    for a in (y, dx, dg, db):
        assert np.isfinite(a).all()
    np.testing.assert_array_equal(y, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("level", [255.0, 1e6, 1e8])
def test_constant_feature_with_a_large_mean_normalises_to_beta(level, backend, dtype):
    # x * (rstd * gamma) + (beta - mean * rstd * gamma) cancels here (rstd = 1/sqrt(eps)):
    # -23.3 instead of 0 at 1e6 in float32.
    x = np.full((8, 3), level, dtype)
    x[:, 1] = -level
    gamma = np.array([1.0, 2.0, 0.5], dtype)
    beta = np.array([0.0, 0.25, -1.0], dtype)
    y, _, _ = F.batchnorm(x, gamma, beta, backend=backend)
    np.testing.assert_array_equal(y, np.broadcast_to(beta, x.shape))
    y_eval, _, _ = F.batchnorm(x, gamma, beta, training=False, running_mean=x[0].copy(),
                               running_var=np.zeros(3, dtype), backend=backend)
    np.testing.assert_array_equal(y_eval, np.broadcast_to(beta, x.shape))


def test_constant_feature_with_a_large_mean_in_a_sequential():
    model = nn.Sequential([nn.Linear(2, 3), nn.BatchNorm(3)])
    model.layers[0].W[...] = 0
    model.layers[0].b[...] = 1e6
    y = model(np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(y, 0)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_gradient_buffers_are_overwritten(backend):
    x, gamma, beta, dy, _, _ = _inputs((6, 5), np.float64)
    _, mean, rstd = F.batchnorm(x, gamma, beta, backend=backend)
    dg, db = np.full(5, 9.0), np.full(5, -9.0)
    F.batchnorm_backward(dy, x, mean, rstd, gamma, dgamma=dg, dbeta=db, backend=backend)
    xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(dg, (dy * xhat).sum(0), rtol=1e-10)
    np.testing.assert_allclose(db, dy.sum(0), rtol=1e-12)


@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forward_kernels_in_place_equal_out_of_place(dtype, build):
    """The training and eval forwards with y = x (their own loop,
    ``_config.same_data``): the same values, in both builds."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((67, 13)) * 2 + 1).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, 13).astype(dtype), rng.standard_normal(13).astype(dtype)
    rm, rv = rng.standard_normal(13).astype(dtype), rng.uniform(0.5, 2, 13).astype(dtype)
    fwd, ev = getattr(K.batchnorm_forward, build), getattr(K.batchnorm_forward_eval, build)
    stats = [np.empty(13, dtype) for _ in range(3)]
    want = np.empty_like(x)
    fwd(want, *stats, x, gamma, beta, 1e-5)
    inplace = x.copy()
    fwd(inplace, *stats, inplace, gamma, beta, 1e-5)
    np.testing.assert_array_equal(inplace, want)
    ev(want, x, rm, rv, gamma, beta, 1e-5)
    inplace = x.copy()
    ev(inplace, inplace, rm, rv, gamma, beta, 1e-5)
    np.testing.assert_array_equal(inplace, want)
