"""fastnn.kernels.dropout against fastnn.reference.dropout: identical masks,
reproducible per (seed, step), the keep rate, identity cases, and the
backward reusing the forward's mask."""

import numba
import numpy as np
import pytest

from fastnn import functional as F
from fastnn import nn
from fastnn.kernels import dropout as K
from fastnn.reference import dropout as R

from _helpers import (BIG, DTYPE_IDS, DTYPES, SHAPES, assert_grad_close, backends, numeric_grad,
                      randn, rng_for, run_both)


def _check(shape, dtype, p=0.3):
    rng = rng_for("drop", shape, np.dtype(dtype).name)
    x = randn(rng, shape, dtype)
    dy = randn(rng, shape, dtype)
    (y, mask), _ = run_both(*backends(F.dropout, seed=1234, step=7), lambda: (x, p),
                            names=["y", "mask"])
    assert y.dtype == dtype and mask.dtype == np.uint8 and mask.shape == shape
    scale = dtype(1 / (1 - p))
    np.testing.assert_array_equal(y, np.where(mask == 1, x * scale, 0))
    (dx,), _ = run_both(*backends(F.dropout_backward), lambda: (dy, mask, p), names=["dx"])
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, np.where(mask == 1, dy * scale, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES + ((2, 3, 5),))
def test_forward_and_backward_match_reference(shape, dtype):
    _check(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_matches_reference(dtype):
    _check(BIG, dtype, p=0.5)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernels_called_directly_match_reference(dtype):
    rng = rng_for("drop-direct", np.dtype(dtype).name)
    x = randn(rng, 101, dtype)
    seed, step = np.uint64(5), np.uint64(3)
    thr = K.dropout_threshold(0.25)
    (y, mask), _ = run_both(K.dropout_forward, R.dropout_forward,
                            lambda: (np.empty_like(x), np.empty(101, np.uint8), x, seed, step, thr, 4 / 3),
                            names=["y", "mask"], n_out=2)
    run_both(K.dropout_backward, R.dropout_backward,
             lambda: (np.empty_like(x), x, mask, 4 / 3), names=["dx"], n_out=1)
    (kept,), _ = run_both(K.kept_mask, R.kept_mask, lambda: (np.empty(101, np.uint8), seed, step, thr, 3),
                          names=["mask"], n_out=1)
    (y_key,), _ = run_both(K.dropout_by_key, R.dropout_by_key,
                           lambda: (np.empty_like(x), x, seed, step, thr, 4 / 3, 3), names=["y"], n_out=1)
    np.testing.assert_array_equal(y_key, np.where(kept == 1, x * x.dtype.type(4 / 3), 0))


@pytest.mark.parametrize("seed,step", [(0, 0), (1, 2), (2**63 + 5, 7), (2**64 - 1, 2**40)])
def test_kernel_and_reference_keys_agree(seed, step):
    k = K.dropout_key(np.uint64(seed), np.uint64(step))
    r = R.dropout_key(seed, step)
    assert (int(k[0]), int(k[1])) == (int(r[0]), int(r[1]))


def _mask(seed, step, shape=(50, 40), p=0.5, backend="numba"):
    return F.dropout(np.ones(shape, np.float32), p, seed=seed, step=step, backend=backend)[1]


def test_masks_are_reproducible_and_differ_across_steps_and_seeds():
    a = _mask(1, 1)
    np.testing.assert_array_equal(a, _mask(1, 1))
    np.testing.assert_array_equal(a, _mask(1, 1, backend="numpy"))
    for other in (_mask(1, 2), _mask(2, 1), _mask(0, 1)):
        assert (a != other).mean() > 0.3  # independent masks differ in ~half the places
    # same mask whatever the dtype of x
    m64 = F.dropout(np.ones((50, 40)), 0.5, seed=1, step=1)[1]
    np.testing.assert_array_equal(a, m64)


def test_mask_does_not_depend_on_thread_count():
    x = np.ones(BIG, np.float32)
    thr = K.dropout_threshold(0.2)
    masks = []
    before = numba.get_num_threads()
    try:
        for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            y, m = np.empty_like(x).reshape(-1), np.empty(x.size, np.uint8)
            K.dropout_forward.parallel(y, m, x.reshape(-1), np.uint64(9), np.uint64(4), thr, 1.25)
            masks.append(m)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(masks[0], masks[-1])


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_mean(p, backend):
    n = 200_000
    x = np.ones(n, np.float64)
    y, mask = F.dropout(x, p, seed=42, step=1, backend=backend)
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(mask.mean() - (1 - p)) < 5 * sigma
    assert abs(y.mean() - 1.0) < 5 * sigma / (1 - p)  # inverted dropout keeps the mean


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_p_zero_and_eval_are_identity(backend):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for kw in (dict(p=0.0, training=True), dict(p=0.5, training=False)):
        y, mask = F.dropout(x, kw["p"], seed=1, step=1, training=kw["training"], backend=backend)
        assert mask is None
        np.testing.assert_array_equal(y, x)
        dy = np.ones_like(x)
        np.testing.assert_array_equal(F.dropout_backward(dy, mask, kw["p"], backend=backend), dy)
    layer = nn.Dropout(0.5, seed=3)
    layer.backend = backend
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    np.testing.assert_array_equal(layer.eval().forward(x), x)
    np.testing.assert_array_equal(nn.Dropout(0.0).forward(x, training=True), x)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_module_backward_reuses_the_forward_mask(backend):
    rng = rng_for("drop-module")
    x = rng.standard_normal((8, 30)).astype(np.float32)
    layer = nn.Dropout(0.4, seed=11)
    layer.backend = backend
    y = layer.forward(x, training=True)
    dy = rng.standard_normal((8, 30)).astype(np.float32)
    dx = layer.backward(dy)
    kept = y != 0
    np.testing.assert_array_equal(dx != 0, kept)
    np.testing.assert_allclose(dx[kept], dy[kept] / 0.6, rtol=1e-6)
    # the next training forward draws a new mask
    assert (layer.forward(x, training=True) != 0).tolist() != kept.tolist()


def test_module_masks_match_across_backends_and_are_reproducible():
    x = np.ones((16, 20), np.float32)
    a, b = nn.Dropout(0.5, seed=77), nn.Dropout(0.5, seed=77)
    b.backend = "numpy"
    for _ in range(3):
        np.testing.assert_array_equal(a.forward(x, training=True), b.forward(x, training=True))
    assert a.step == b.step == 3


def test_reference_backward_matches_finite_differences():
    rng = rng_for("drop-fd")
    x = rng.standard_normal(30)
    dy = rng.standard_normal(30)
    thr, scale = K.dropout_threshold(0.3), 1 / 0.7

    def forward():
        y, mask = np.empty_like(x), np.empty(30, np.uint8)
        R.dropout_forward(y, mask, x, np.uint64(3), np.uint64(1), thr, scale)
        return y, mask

    def loss():
        return float((forward()[0] * dy).sum())

    _, mask = forward()
    dx = np.empty_like(x)
    R.dropout_backward(dx, dy, mask, scale)
    assert_grad_close(dx, numeric_grad(loss, x), "dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_offset_kernel_matches_reference(dtype):
    """With an index offset (also one past 2**32), kernel and reference agree."""
    rng = rng_for("drop-offset", np.dtype(dtype).name)
    x = randn(rng, 5000, dtype)
    thr = K.dropout_threshold(0.4)
    for offset in (0, 37, 2**32 - 100):
        run_both(K.dropout_forward, R.dropout_forward,
                 lambda: (np.empty_like(x), np.empty(x.size, np.uint8), x, np.uint64(8), np.uint64(2),
                          thr, 5 / 3, offset),
                 names=["y", "mask"], n_out=2)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_row_offset_gives_the_masks_of_those_rows_in_the_whole_batch(backend):
    x = np.ones((30, 4, 3), np.float32)
    _, whole = F.dropout(x, 0.5, seed=4, step=2, backend=backend)
    for r0 in (0, 1, 17):
        _, part = F.dropout(x[r0:], 0.5, seed=4, step=2, row_offset=r0, backend=backend)
        np.testing.assert_array_equal(part, whole[r0:])
    with pytest.raises(ValueError, match="row_offset"):
        F.dropout(x, 0.5, seed=4, step=2, row_offset=-1)
    with pytest.raises(TypeError, match="row_offset"):
        F.dropout(x, 0.5, seed=4, step=2, row_offset=1.5)


def test_module_row_offset_matches_the_fused_path():
    """Dropout.row_offset moves the masks of the layer-by-layer and fused paths alike."""
    x = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    outs = []
    for fuse in (False, True):
        model = nn.Sequential([nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5, seed=7)], fuse=fuse)
        model[0].W[...] = np.linspace(-1, 1, 48, dtype=np.float32).reshape(6, 8)
        whole = model.forward(x, training=True)
        whole_mask = model[2].mask.copy()
        model[2].step = 0
        model[2].row_offset = 4
        part = model.forward(x[4:], training=True)
        np.testing.assert_allclose(part, whole[4:], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(model[2].mask, whole_mask[4:])
        outs.append(whole)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fuse", [False, True])
def test_a_dropout_at_the_end_of_its_mask_sequence_refuses_another_training_forward(fuse):
    """step counts training forwards up to 2**63 - 1: the next one raises on the
    plain, fused and compiled paths alike, and leaves the step where it was."""
    x = np.ones((4, 3), np.float32)
    alone = nn.Dropout(0.5, seed=1)
    model = nn.Sequential([nn.Linear(3, 5), nn.ReLU(), nn.Dropout(0.5, seed=1), nn.Linear(5, 2)], fuse=fuse)
    for drop, run in ((alone, lambda: alone.forward(x, training=True)),
                      (model[2], lambda: model.forward(x, training=True))):
        drop.step = 2**63 - 2
        run()
        assert drop.step == 2**63 - 1
        with pytest.raises(ValueError, match="end of its mask sequence"):
            run()
        assert drop.step == 2**63 - 1
        drop.forward(x, training=False)  # eval mode draws no mask
        assert drop.step == 2**63 - 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("row_offset", [0, 5])
def test_dropout_by_key_gives_the_mask_paths_outputs_bit_for_bit(dtype, row_offset):
    """One kernel for both directions: x -> y and dy -> dx with the mask hashed
    again equal dropout's y and dropout_backward's dx with the stored mask."""
    rng = rng_for("drop-by-key", np.dtype(dtype).name, row_offset)
    x, dy = randn(rng, (37, 29), dtype), randn(rng, (37, 29), dtype)
    key = dict(seed=2**64 - 3, step=9, row_offset=row_offset)
    y, mask = F.dropout(x, 0.3, **key)
    dx = F.dropout_backward(dy, mask, 0.3)
    (y_key,), _ = run_both(*backends(F.dropout_by_key, **key), lambda: (x, 0.3), names=["y"])
    (dx_key,), _ = run_both(*backends(F.dropout_by_key, **key), lambda: (dy, 0.3), names=["dx"])
    for got, want in ((y_key, y), (dx_key, dx)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))
    np.testing.assert_array_equal(F.dropout_mask(x.shape, 0.3, **key), mask)
    assert F.dropout_by_key(x, 0.0, seed=1, step=1) is x
    assert F.dropout_mask(x.shape, 0.0, seed=1, step=1) is None


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_dropped_elements_are_products_with_zero_as_in_the_reference(backend):
    """A dropped element is x * 0: a zero of x's sign, NaN for an infinite or
    NaN x (as PyTorch's x * mask * scale), on every kernel path."""
    x = np.array([[-1.5, 2.0, -np.inf, np.inf, np.nan, -0.0, 3.0, -4.0]] * 64, np.float32)
    with np.errstate(invalid="ignore"):
        y, mask = F.dropout(x, 0.5, seed=4, step=1, backend=backend)
        drop = mask == 0
        assert (drop & np.isinf(x)).any() and (drop & (x < 0)).any() and mask.any()
        want = x * mask.astype(np.float32) * np.float32(2)
        _check_products(x, y, mask, want, drop, backend)


def _check_products(x, y, mask, want, drop, backend):
    for got in (y, F.dropout_by_key(x, 0.5, seed=4, step=1, backend=backend),
                F.dropout_backward(x, mask, 0.5, backend=backend)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.signbit(got[drop & ~np.isnan(want)]),
                                      np.signbit(x[drop & ~np.isnan(want)]))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_module_without_a_stored_mask_trains_as_with_one(backend):
    """Inputs of HASH_AGAIN_FROM bytes and more keep no mask: forward, backward,
    the mask on request and the error on a wrong dy are those of the mask path."""
    rng = rng_for("drop-hash-again", backend)
    x, dy = randn(rng, (16, 40), np.float32), randn(rng, (16, 40), np.float32)
    stored, hashed = nn.Dropout(0.25, seed=21), nn.Dropout(0.25, seed=21)
    hashed.HASH_AGAIN_FROM = 0
    for m in (stored, hashed):
        m.backend = backend
        m.row_offset = 3
    for _ in range(2):
        np.testing.assert_array_equal(hashed.forward(x), stored.forward(x))
        assert hashed._mask is None and stored._mask is not None
        np.testing.assert_array_equal(hashed.backward(dy), stored.backward(dy))
        np.testing.assert_array_equal(hashed.mask, stored.mask)
        assert hashed.mask.dtype == np.uint8
    hashed.seed = 5  # a later change of seed does not reach the last forward's backward
    np.testing.assert_array_equal(hashed.backward(dy), stored.backward(dy))
    with pytest.raises(ValueError, match=r"dy must have the shape of the dropout mask \(16, 40\)"):
        hashed.backward(dy[:8])
    with pytest.raises(ValueError, match=r"dy must have the shape of the dropout mask \(16, 40\)"):
        stored.backward(dy[:8])
    hashed.forward(x, training=False)
    assert hashed.mask is None
    np.testing.assert_array_equal(hashed.backward(dy), dy)


def test_dropout_mask_checks_its_arguments():
    with pytest.raises(ValueError, match="shape must be a non-empty tuple of positive ints"):
        F.dropout_mask((3, 0), 0.5, seed=1, step=1)
    with pytest.raises(ValueError, match="shape must be"):
        F.dropout_mask([3, 4], 0.5, seed=1, step=1)
    with pytest.raises(TypeError, match="seed must be an int"):
        F.dropout_mask((3, 4), 0.5, seed=1.0, step=1)
    with pytest.raises(ValueError, match="p must be"):
        F.dropout_mask((3, 4), 1.0, seed=1, step=1)
    assert F.dropout_mask(7, 0.5, seed=1, step=1).shape == (7,)
    with pytest.raises(TypeError, match="dy must be"):
        F.dropout_by_key("a", 0.5, seed=1, step=1, name="dy")


@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernels_in_place_equal_out_of_place(dtype, build):
    """dropout_forward and dropout_by_key with y = x, dropout_backward with
    dx = dy: their own loops (``_config.same_data``), the same values."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(5000).astype(dtype)
    threshold, scale = K.dropout_threshold(0.3), 1 / 0.7
    fwd, by_key, bwd = (getattr(k, build) for k in (K.dropout_forward, K.dropout_by_key, K.dropout_backward))
    y, mask = np.empty_like(x), np.empty(x.shape, np.uint8)
    fwd(y, mask, x, 5, 7, threshold, scale, 3)
    inplace, mask2 = x.copy(), np.empty(x.shape, np.uint8)
    fwd(inplace, mask2, inplace, 5, 7, threshold, scale, 3)
    np.testing.assert_array_equal(inplace, y)
    np.testing.assert_array_equal(mask2, mask)
    inplace = x.copy()
    by_key(inplace, inplace, 5, 7, threshold, scale, 3)
    np.testing.assert_array_equal(inplace, y)
    dx = np.empty_like(x)
    bwd(dx, x, mask, scale)
    inplace = x.copy()
    bwd(inplace, inplace, mask, scale)
    np.testing.assert_array_equal(inplace, dx)
