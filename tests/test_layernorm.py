"""fastnn.kernels.layernorm against fastnn.reference.layernorm, and the
reference against finite differences and the seed's formula."""

import numpy as np
import pytest

from fastnn import functional as F
from fastnn.kernels import layernorm as K
from fastnn.reference import layernorm as R

from _helpers import (BIG, DTYPE_IDS, DTYPES, SHAPES, assert_grad_close, backends, numeric_grad,
                      randn, rng_for, run_both)


def _inputs(shape, dtype):
    rng = rng_for("ln", shape, np.dtype(dtype).name)
    d = shape[-1]
    x = randn(rng, shape, dtype, 2.0) + 0.5
    gamma = (1 + 0.5 * rng.standard_normal(d)).astype(dtype)
    beta = randn(rng, (d,), dtype)
    dy = randn(rng, shape, dtype)
    return x, gamma, beta, dy


def _check(shape, dtype):
    x, gamma, beta, dy = _inputs(shape, dtype)
    (y, mean, rstd), _ = run_both(*backends(F.layernorm, eps=1e-5), lambda: (x, gamma, beta),
                                  names=["y", "mean", "rstd"])
    assert y.dtype == mean.dtype == rstd.dtype == dtype
    assert y.shape == x.shape and mean.shape == rstd.shape == x.shape[:-1]
    grads, _ = run_both(*backends(F.layernorm_backward), lambda: (dy, x, mean, rstd, gamma),
                        names=["dx", "dgamma", "dbeta"], scale=5.0)
    for g in grads:
        assert g.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES + ((2, 3, 7),))
def test_forward_and_backward_match_reference(shape, dtype):
    _check(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_matches_reference(dtype):
    _check(BIG, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(63, 5), (1000, 17), (2100, 9)])
def test_row_chunks_with_remainders_match_reference(shape, dtype):
    # row chunks of 3-4, 62-63 and 131-132 rows: runs of FLUSH_ROWS rows
    # and rows left over after them; float64's backward takes rows in
    # pairs, with an odd chunk's last row alone
    _check(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernels_called_directly_match_reference(dtype):
    x, gamma, beta, dy = _inputs((5, 33), dtype)
    n = x.shape[0]
    (y, mean, rstd), _ = run_both(
        K.layernorm_forward, R.layernorm_forward,
        lambda: (np.empty_like(x), np.empty(n, dtype), np.empty(n, dtype), x, gamma, beta, 1e-5),
        names=["y", "mean", "rstd"], n_out=3)
    run_both(K.layernorm_backward, R.layernorm_backward,
             lambda: (np.empty_like(x), np.empty(33, dtype), np.empty(33, dtype), dy, x, mean, rstd, gamma),
             names=["dx", "dgamma", "dbeta"], n_out=3, scale=5.0)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_forward_is_the_seed_formula(backend):
    x, gamma, beta, _ = _inputs((6, 11), np.float64)
    y, mean, rstd = F.layernorm(x, gamma, beta, eps=1e-3, backend=backend)
    m = x.mean(axis=-1, keepdims=True)
    v = x.var(axis=-1, keepdims=True)
    np.testing.assert_allclose(y, gamma * (x - m) / np.sqrt(v + 1e-3) + beta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mean, m[:, 0], rtol=1e-12)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(v[:, 0] + 1e-3), rtol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_rows_are_finite(dtype, backend):
    x = np.full((4, 9), 3.25, dtype)
    x[1] = -1e4
    x[2] = 0
    gamma = np.linspace(0.5, 1.5, 9).astype(dtype)
    beta = np.linspace(-1, 1, 9).astype(dtype)
    y, mean, rstd = F.layernorm(x, gamma, beta, backend=backend)
    dx, dg, db = F.layernorm_backward(np.ones_like(x), x, mean, rstd, gamma, backend=backend)
    for a in (y, mean, rstd, dx, dg, db):
        assert np.isfinite(a).all()
    np.testing.assert_allclose(y, np.broadcast_to(beta, x.shape), atol=1e-6)


def test_reference_backward_matches_finite_differences():
    rng = rng_for("ln-fd")
    x = rng.standard_normal((3, 6)) * 2 + 1
    gamma = 1 + 0.3 * rng.standard_normal(6)
    beta = rng.standard_normal(6)
    dy = rng.standard_normal((3, 6))

    def forward():
        y, mean, rstd = np.empty_like(x), np.empty(3), np.empty(3)
        R.layernorm_forward(y, mean, rstd, x, gamma, beta, 1e-5)
        return y, mean, rstd

    def loss():
        return float((forward()[0] * dy).sum())

    _, mean, rstd = forward()
    dx, dgamma, dbeta = np.empty_like(x), np.empty(6), np.empty(6)
    R.layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma)
    assert_grad_close(dx, numeric_grad(loss, x), "dx")
    assert_grad_close(dgamma, numeric_grad(loss, gamma), "dgamma")
    assert_grad_close(dbeta, numeric_grad(loss, beta), "dbeta")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_parallel_result_does_not_depend_on_thread_count(dtype):
    import numba

    x, gamma, beta, dy = _inputs((67, 784), dtype)
    _, mean, rstd = F.layernorm(x, gamma, beta)
    out = []
    before = numba.get_num_threads()
    try:
        for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            d = [np.empty_like(x), np.empty(784, dtype), np.empty(784, dtype)]
            K.layernorm_backward.parallel(*d, dy, x, mean, rstd, gamma)
            out.append(d)
    finally:
        numba.set_num_threads(before)
    for a, b in zip(out[0], out[-1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_one_dimensional_input_has_a_backward(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5).astype(np.float32)
    dy = rng.standard_normal(5).astype(np.float32)
    gamma, beta = np.linspace(0.5, 1.5, 5, dtype=np.float32), np.zeros(5, np.float32)
    y, mean, rstd = F.layernorm(x, gamma, beta, backend=backend)
    assert mean.shape == () and y.shape == (5,)
    dx, dg, db = F.layernorm_backward(dy, x, mean, rstd, gamma, backend=backend)
    y2, mean2, rstd2 = F.layernorm(x[None], gamma, beta, backend=backend)
    dx2, dg2, db2 = F.layernorm_backward(dy[None], x[None], mean2, rstd2, gamma, backend=backend)
    np.testing.assert_array_equal(dx, dx2[0])
    np.testing.assert_array_equal(dg, dg2)
    np.testing.assert_array_equal(db, db2)


def test_is_float64_picks_the_backward_path_by_dtype():
    # the float64 backward's row pairs are chosen by this compile-time test
    from numba import njit

    from fastnn._config import is_float64

    compiled = njit(lambda a: is_float64(a))
    for dtype, expected in ((np.float64, True), (np.float32, False)):
        a = np.zeros(3, dtype)
        assert compiled(a) is expected
        assert is_float64(a) is expected


@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forward_kernel_in_place_equals_out_of_place(dtype, build):
    """The forward with y = x (its own loop, ``_config.same_data``): the
    same values and statistics, in both builds."""
    x, gamma, beta, _ = _inputs((67, 13), dtype)
    fwd = getattr(K.layernorm_forward, build)
    want, mean, rstd = np.empty_like(x), np.empty(67, dtype), np.empty(67, dtype)
    fwd(want, mean, rstd, x, gamma, beta, 1e-5)
    inplace, mean2, rstd2 = x.copy(), np.empty(67, dtype), np.empty(67, dtype)
    fwd(inplace, mean2, rstd2, inplace, gamma, beta, 1e-5)
    np.testing.assert_array_equal(inplace, want)
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(rstd2, rstd)
