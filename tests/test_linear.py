"""fastnn.kernels.linear against fastnn.reference.linear, and the reference
against finite differences."""

import numpy as np
import pytest

from fastnn import functional as F
from fastnn.kernels import linear as K
from fastnn.reference import linear as R

from _helpers import (BIG, DTYPE_IDS, DTYPES, SHAPES, assert_grad_close, backends,
                      numeric_grad, randn, rng_for, run_both)

# out features per input shape: odd, and 256 for the MNIST layer
OUT = {(1, 5): 3, (3, 7): 4, (5, 33): 9, (64, 784): 256, BIG: 1024}


def _inputs(shape, dtype, bias=True):
    rng = rng_for("linear", shape, np.dtype(dtype).name, bias)
    n, d = shape
    h = OUT[shape]
    x = randn(rng, (n, d), dtype)
    W = randn(rng, (d, h), dtype, 1 / np.sqrt(d))
    b = randn(rng, (h,), dtype) if bias else None
    dy = randn(rng, (n, h), dtype)
    return x, W, b, dy


def _check_forward_backward(shape, dtype, bias=True):
    x, W, b, dy = _inputs(shape, dtype, bias)
    (y,), _ = run_both(*backends(F.linear), lambda: (x, W, b), names=["y"])
    assert y.dtype == dtype and y.shape == (shape[0], OUT[shape])
    grads, _ = run_both(*backends(F.linear_backward, has_bias=bias), lambda: (dy, x, W),
                        names=["dx", "dW", "db"])
    dx, dW, db = grads
    assert dx.dtype == dW.dtype == dtype
    assert (db is None) == (not bias)
    if bias:
        assert db.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_reference(shape, dtype):
    _check_forward_backward(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_no_bias_matches_reference(dtype):
    _check_forward_backward((5, 33), dtype, bias=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_matches_reference(dtype):
    _check_forward_backward(BIG, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernels_called_directly_match_reference(dtype):
    x, W, b, dy = _inputs((5, 33), dtype)
    n, h = dy.shape

    def fwd_args():
        return (np.empty((n, h), dtype), x, W, b)

    run_both(K.linear_forward, R.linear_forward, fwd_args, names=["y"], n_out=1)

    def bwd_args():
        return (np.empty_like(x), np.empty_like(W), np.empty(h, dtype), dy, x, W)

    run_both(K.linear_backward, R.linear_backward, bwd_args, names=["dx", "dW", "db"], n_out=3)

    # The column-sum and bias-add kernels on their own, serial and parallel builds.
    for build in ("serial", "parallel"):
        out = np.empty(h, dtype)
        getattr(K.column_sum, build)(out, dy)
        np.testing.assert_allclose(out, dy.sum(axis=0, dtype=np.float64), rtol=1e-5)
        y = dy.copy()
        getattr(K.bias_add, build)(y, b)
        np.testing.assert_array_equal(y, dy + b)


def test_need_dx_false_skips_dx():
    x, W, b, dy = _inputs((3, 7), np.float32)
    for backend in ("numba", "numpy"):
        dx, dW, db = F.linear_backward(dy, x, W, need_dx=False, backend=backend)
        assert dx is None
        np.testing.assert_allclose(dW, x.T @ dy, rtol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_gradient_buffers_are_overwritten_not_accumulated(backend):
    x, W, b, dy = _inputs((3, 7), np.float64)
    dW = np.full_like(W, 123.0)
    db = np.full_like(b, -7.0)
    F.linear_backward(dy, x, W, dW=dW, db=db, backend=backend)
    np.testing.assert_allclose(dW, x.T @ dy)
    np.testing.assert_allclose(db, dy.sum(axis=0))


def test_reference_backward_matches_finite_differences():
    x, W, b, dy = _inputs((3, 7), np.float64)
    x, W, b = x.copy(), W.copy(), b.copy()

    def loss():
        y = np.empty(dy.shape)
        R.linear_forward(y, x, W, b)
        return float((y * dy).sum())

    dx, dW, db = np.empty_like(x), np.empty_like(W), np.empty_like(b)
    R.linear_backward(dx, dW, db, dy, x, W)
    assert_grad_close(dx, numeric_grad(loss, x), "dx")
    assert_grad_close(dW, numeric_grad(loss, W), "dW")
    assert_grad_close(db, numeric_grad(loss, b), "db")


def test_forward_is_the_seed_formula():
    x, W, b, _ = _inputs((5, 33), np.float64)
    for backend in ("numba", "numpy"):
        np.testing.assert_allclose(F.linear(x, W, b, backend=backend), x @ W + b, rtol=1e-12)
