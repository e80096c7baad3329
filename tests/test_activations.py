"""fastnn.kernels.activations against fastnn.reference.activations, the
references against finite differences, and behaviour at extreme inputs."""

import math
import warnings

import numpy as np
import pytest
from numba import prange

from fastnn import functional as F
from fastnn._config import PARALLEL_BUILD, Kernel
from fastnn.kernels import activations as K
from fastnn.kernels._fpenv import FLUSHES_SUBNORMALS
from fastnn.reference import activations as R

from _helpers import (BIG, DTYPE_IDS, DTYPES, SHAPES, assert_close_up_to_flush, assert_grad_close,
                      assert_ieee_subnormals_here, backends, numeric_grad, randn, rng_for, run_both,
                      subnormal_count, subnormal_inputs)

NAMES = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu")


def _saved(name, x, backend):
    """What the backward takes: the forward's output for sigmoid/tanh, else x."""
    return F.activation(name, x, backend=backend) if name in F.SAVES_OUTPUT else x


def _check(name, shape, dtype, alpha=0.01):
    rng = rng_for("act", name, shape, np.dtype(dtype).name)
    x = randn(rng, shape, dtype, 3.0)
    dy = randn(rng, shape, dtype)
    (y,), _ = run_both(*backends(F.activation, alpha=alpha), lambda: (name, x), names=[f"{name} y"])
    assert y.dtype == dtype and y.shape == x.shape
    saved = _saved(name, x, "numpy")
    (dx,), _ = run_both(*backends(F.activation_backward, alpha=alpha), lambda: (name, dy, saved),
                        names=[f"{name} dx"])
    assert dx.dtype == dtype and dx.shape == x.shape


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES + ((2, 3, 5),))
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_match_reference(name, shape, dtype):
    _check(name, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_matches_reference(dtype):
    for name in NAMES:
        _check(name, BIG, dtype)


def test_leaky_relu_alpha_is_used():
    x = np.array([-2.0, -0.5, 0.0, 1.5])
    for backend in ("numba", "numpy"):
        y = F.leaky_relu(x, alpha=0.2, backend=backend)
        np.testing.assert_allclose(y, [-0.4, -0.1, 0.0, 1.5])
        dx = F.activation_backward("leaky_relu", np.ones(4), x, alpha=0.2, backend=backend)
        np.testing.assert_allclose(dx, [0.2, 0.2, 0.2, 1.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernels_called_directly_match_reference(dtype):
    rng = rng_for("act-direct", np.dtype(dtype).name)
    x = randn(rng, 37, dtype, 3.0)
    dy = randn(rng, 37, dtype)
    for name in NAMES:
        extra = (0.05,) if name == "leaky_relu" else ()
        fwd, bwd = name + "_forward", name + "_backward"
        run_both(getattr(K, fwd), getattr(R, fwd), lambda: (np.empty_like(x), x) + extra,
                 names=[fwd], n_out=1)
        saved = x
        if name in F.SAVES_OUTPUT:
            saved = np.empty_like(x)
            getattr(R, fwd)(saved, x)
        run_both(getattr(K, bwd), getattr(R, bwd), lambda: (np.empty_like(x), dy, saved) + extra,
                 names=[bwd], n_out=1)


def _math_reference(name, v):
    """The seed's formulas, one float at a time."""
    if name == "relu":
        return max(v, 0.0)
    if name == "leaky_relu":
        return v if v > 0 else 0.01 * v
    if name == "sigmoid":
        return 1 / (1 + math.exp(-v))
    if name == "tanh":
        return math.tanh(v)
    if name == "gelu":
        return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
    if name == "silu":
        return v / (1 + math.exp(-v))
    raise AssertionError(name)


@pytest.mark.parametrize("name", NAMES)
def test_reference_forward_is_the_seed_formula(name):
    x = np.linspace(-6, 6, 41)
    y = np.empty_like(x)
    getattr(R, name + "_forward")(y, x, *((0.01,) if name == "leaky_relu" else ()))
    np.testing.assert_allclose(y, [_math_reference(name, v) for v in x], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_reference_backward_matches_finite_differences(name):
    rng = rng_for("act-fd", name)
    x = rng.uniform(-4, 4, 23)
    x[np.abs(x) < 0.05] += 0.2  # keep away from the ReLU kinks
    dy = rng.standard_normal(23)
    extra = (0.01,) if name == "leaky_relu" else ()
    fwd = getattr(R, name + "_forward")

    def loss():
        y = np.empty_like(x)
        fwd(y, x, *extra)
        return float((y * dy).sum())

    saved = x
    if name in F.SAVES_OUTPUT:
        saved = np.empty_like(x)
        fwd(saved, x)
    dx = np.empty_like(x)
    getattr(R, name + "_backward")(dx, dy, saved, *extra)
    assert_grad_close(dx, numeric_grad(loss, x), f"{name} dx")


# value and derivative at -1e4 and +1e4
EXTREMES = {
    "sigmoid": ((0.0, 1.0), (0.0, 0.0)),
    "tanh": ((-1.0, 1.0), (0.0, 0.0)),
    "gelu": ((0.0, 1e4), (0.0, 1.0)),
    "silu": ((0.0, 1e4), (0.0, 1.0)),
}


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", sorted(EXTREMES))
def test_extreme_inputs_are_finite_and_warning_free(name, dtype, backend):
    x = np.array([-1e4, 1e4, -1e3, 1e3, -88.0, 88.0, -30.5, 30.5], dtype=dtype)
    # Underflow to 0 is the correct answer (exp(-1e4)); overflow and NaN are bugs.
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        y = F.activation(name, x, backend=backend)
        saved = y if name in F.SAVES_OUTPUT else x
        dx = F.activation_backward(name, np.ones_like(x), saved, backend=backend)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    (y_lo, y_hi), (d_lo, d_hi) = EXTREMES[name]
    np.testing.assert_allclose(y[:2], [y_lo, y_hi], atol=1e-30)
    np.testing.assert_allclose(dx[:2], [d_lo, d_hi], atol=1e-30)


@pytest.mark.parametrize("name", NAMES)
def test_float32_is_not_promoted(name):
    x = np.linspace(-3, 3, 11, dtype=np.float32)
    for backend in ("numba", "numpy"):
        y = F.activation(name, x, backend=backend)
        dx = F.activation_backward(name, np.ones_like(x), _saved(name, x, backend), backend=backend)
        assert y.dtype == np.float32 and dx.dtype == np.float32
        # float32 math agrees with float64 math to float32 precision
        y64 = F.activation(name, x.astype(np.float64), backend=backend)
        np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_input_works(name):
    rng = rng_for("act-nc", name)
    x = rng.standard_normal((6, 10))[:, ::2]
    assert not x.flags.c_contiguous
    for backend in ("numba", "numpy"):
        np.testing.assert_allclose(F.activation(name, x, backend=backend),
                                   F.activation(name, np.ascontiguousarray(x), backend=backend))


def test_every_kernel_has_a_cost():
    """functional weights each kernel's work= by its module's COST table."""
    from fastnn.kernels import batchnorm, dropout, layernorm, softmax_xent

    for mod in (K, batchnorm, dropout, layernorm, softmax_xent):
        kernels = {name for name, v in vars(mod).items() if isinstance(v, Kernel)}
        assert kernels == set(mod.COST), mod.__name__
        assert all(len(c) == 2 and min(c) > 0 for c in mod.COST.values())


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_float64_gelu_matches_the_formula_and_its_negative_tail(backend):
    """float64 GELU computes 0.5 (1 + tanh(u)) as 1 / (1 + exp(-2u)) (one exp and
    one division): equal to the seed's formula where that is accurate, and
    without its cancellation where 1 + tanh(u) is tiny (x < -3)."""
    c = math.sqrt(2 / math.pi)

    def exact(v):  # value and derivative through the sigmoid identity, in Python floats
        u = c * (v + 0.044715 * v**3)
        s = 1 / (1 + math.exp(-2 * u))
        return v * s, s + 2 * v * s * (1 - s) * c * (1 + 3 * 0.044715 * v * v)

    x = np.concatenate([np.linspace(-3, 3, 61), np.linspace(-8, -3, 26)])
    y = F.activation("gelu", x, backend=backend)
    dx = F.activation_backward("gelu", np.ones_like(x), x, backend=backend)
    want = np.array([exact(v) for v in x])
    mid = np.abs(x) <= 3
    np.testing.assert_allclose(y[mid], [_math_reference("gelu", v) for v in x[mid]], rtol=1e-13, atol=1e-300)
    # the NumPy reference keeps the seed's form, 1 + tanh(u): exact in the middle only
    part = slice(None) if backend == "numba" else mid
    np.testing.assert_allclose(y[part], want[part, 0], rtol=1e-13, atol=0)
    np.testing.assert_allclose(dx[part], want[part, 1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_kernels_in_place_equal_out_of_place(name, dtype, build):
    """Each kernel called in place (y = x; dx = dy; dx = the saved array)
    takes its own loop (``_config.same_data``): the same values as out of
    place, in both builds."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(1000) * 3).astype(dtype)
    dy = rng.standard_normal(1000).astype(dtype)
    extra = (0.01,) if name == "leaky_relu" else ()
    fwd = getattr(getattr(K, name + "_forward"), build)
    bwd = getattr(getattr(K, name + "_backward"), build)
    y = np.empty_like(x)
    fwd(y, x, *extra)
    saved = y if name in F.SAVES_OUTPUT else x
    dx = np.empty_like(x)
    bwd(dx, dy, saved, *extra)
    inplace = x.copy()
    fwd(inplace, inplace, *extra)
    np.testing.assert_array_equal(inplace, y)
    into_dy = dy.copy()
    bwd(into_dy, into_dy, saved, *extra)
    np.testing.assert_array_equal(into_dy, dx)
    into_saved = saved.copy()
    bwd(into_saved, dy, into_saved, *extra)
    np.testing.assert_array_equal(into_saved, dx)


def test_same_data_compares_start_addresses_in_python_and_compiled():
    from numba import njit

    from fastnn._config import same_data

    compiled = njit(lambda a, b: same_data(a, b))
    x = np.arange(12.0)
    for fn in (same_data, compiled):
        assert fn(x, x) and fn(x, x.reshape(3, 4)[0]) and fn(x[2:], x[2:7])
        assert not fn(x, x.copy()) and not fn(x[1:], x[:-1])


# ------------------------------------------------------------ subnormals


@pytest.mark.skipif(not FLUSHES_SUBNORMALS, reason="the kernels flush subnormals on x86-64 only")
@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_gelu_and_silu_kernels_flush_subnormals(name, dtype, build):
    """GELU's and SiLU's kernels run with flush-to-zero (on subnormal operands
    their arithmetic took x86's slow path, 3x the time): no subnormal in what
    they store, and agreement with the IEEE reference up to the flushed values.
    Several blocks and a ragged tail; the caller's mode is restored after."""
    x, dy = subnormal_inputs(dtype, 3 * K.FLUSH_BLOCK + 77, name)
    fwd, bwd = (getattr(getattr(K, name + suffix), build) for suffix in ("_forward", "_backward"))
    y_ref, dx_ref = np.empty_like(x), np.empty_like(x)
    getattr(R, name + "_forward")(y_ref, x)
    getattr(R, name + "_backward")(dx_ref, dy, x)
    assert subnormal_count(y_ref) > 100 and subnormal_count(dx_ref) > 100  # the case is exercised
    y, dx = np.empty_like(x), np.empty_like(x)
    fwd(y, x)
    bwd(dx, dy, x)
    assert_close_up_to_flush(y, y_ref, f"{name} y")
    assert_close_up_to_flush(dx, dx_ref, f"{name} dx")
    assert_ieee_subnormals_here()


@pytest.mark.skipif(not FLUSHES_SUBNORMALS, reason="the kernels flush subnormals on x86-64 only")
def test_activations_without_flush_keep_ieee_subnormals():
    """The other activations keep IEEE arithmetic: a subnormal input passes
    ReLU unchanged, and Sigmoid's backward makes subnormal gradients."""
    tiny = np.finfo(np.float32).tiny
    x = np.full(8, tiny / 4, np.float32)
    np.testing.assert_array_equal(F.relu(x), x)
    dx = F.activation_backward("sigmoid", x, np.full(8, 0.5, np.float32))
    np.testing.assert_array_equal(dx, np.float32(tiny / 16))


def _which_build(out):
    for i in prange(out.shape[0]):
        out[i] = 1 if PARALLEL_BUILD else 0


def test_each_kernel_build_sees_its_own_parallel_build_flag():
    """``_config.PARALLEL_BUILD`` reads False in a Kernel's serial build and
    True in its parallel one; GELU's and SiLU's kernels size their
    flush-to-zero blocks by it: one block serially, several in parallel."""
    which = Kernel(_which_build)
    out = np.full(4, 7, np.int64)
    which.serial(out)
    assert np.all(out == 0)
    which.parallel(out)
    assert np.all(out == 1)
    assert PARALLEL_BUILD is False  # the module's own value is untouched
    n = 1 << 20
    assert K.flush_block_size(n, False) == n
    size = K.flush_block_size(n, True)
    assert K.FLUSH_BLOCK_MIN <= size <= K.FLUSH_BLOCK and n // size >= 4
    assert K.flush_block_size(100, True) == K.FLUSH_BLOCK_MIN  # one short block
