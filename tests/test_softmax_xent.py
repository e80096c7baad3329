"""fastnn.kernels.softmax_xent against fastnn.reference.softmax_xent, the
reference against finite differences and against logsumexp - z[y]."""

import warnings

import numpy as np
import pytest

from fastnn import functional as F
from fastnn.kernels import softmax_xent as K
from fastnn.reference import softmax_xent as R

from _helpers import (BIG, DTYPE_IDS, DTYPES, SHAPES, assert_grad_close, backends,
                      numeric_grad, randn, rng_for, run_both)


def _inputs(shape, dtype, scale=3.0):
    rng = rng_for("xent", shape, np.dtype(dtype).name)
    logits = randn(rng, shape, dtype, scale)
    labels = rng.integers(0, shape[1], shape[0])
    return logits, labels


def _logsumexp_loss(logits, labels):
    """Per-sample logsumexp(z) - z[y] in float64, independent of fastnn."""
    z = logits.astype(np.float64)
    return np.logaddexp.reduce(z, axis=1) - z[np.arange(len(labels)), labels]


def _check(shape, dtype):
    logits, labels = _inputs(shape, dtype)
    (loss, probs, _), _ = run_both(*backends(F.softmax_xent), lambda: (logits, labels),
                                   names=["loss", "probs", "labels"])
    assert isinstance(loss, float)
    assert probs.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, _logsumexp_loss(logits, labels).mean(), rtol=rtol)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=10 * rtol)
    (d,), _ = run_both(*backends(F.softmax_xent_backward), lambda: (probs, labels), names=["dlogits"])
    assert d.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES + ((32, 10),))
def test_labels_forward_and_backward_match_reference(shape, dtype):
    _check(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_matches_reference(dtype):
    _check(BIG, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(1, 5), (5, 33), (64, 10)])
def test_soft_targets_match_reference(shape, dtype):
    rng = rng_for("xent-soft", shape, np.dtype(dtype).name)
    logits = randn(rng, shape, dtype, 2.0)
    t = rng.random(shape)
    t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    (loss, probs, _), _ = run_both(*backends(F.softmax_xent), lambda: (logits, t),
                                   names=["loss", "probs", "targets"])
    run_both(*backends(F.softmax_xent_backward), lambda: (probs, t), names=["dlogits"])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernels_called_directly_match_reference(dtype):
    logits, labels = _inputs((5, 33), dtype)
    n, c = logits.shape
    onehot = np.eye(c, dtype=dtype)[labels]
    run_both(K.softmax_xent_forward_labels, R.softmax_xent_forward_labels,
             lambda: (np.empty((n, c), dtype), np.empty(n, dtype), logits, labels),
             names=["probs", "losses"], n_out=2)
    run_both(K.softmax_xent_forward_targets, R.softmax_xent_forward_targets,
             lambda: (np.empty((n, c), dtype), np.empty(n, dtype), logits, onehot),
             names=["probs", "losses"], n_out=2)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(dtype)
    run_both(K.softmax_xent_backward_labels, R.softmax_xent_backward_labels,
             lambda: (np.empty((n, c), dtype), probs, labels), names=["dlogits"], n_out=1)
    run_both(K.softmax_xent_backward_targets, R.softmax_xent_backward_targets,
             lambda: (np.empty((n, c), dtype), probs, onehot), names=["dlogits"], n_out=1)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_labels_and_one_hot_targets_agree(dtype, backend):
    logits, labels = _inputs((7, 5), dtype)
    onehot = np.eye(5, dtype=dtype)[labels]
    loss_l, probs_l, tl = F.softmax_xent(logits, labels, backend=backend)
    loss_t, probs_t, tt = F.softmax_xent(logits, onehot, backend=backend)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss_l, loss_t, rtol=rtol)
    np.testing.assert_array_equal(probs_l, probs_t)
    np.testing.assert_allclose(F.softmax_xent_backward(probs_l, tl, backend=backend),
                               F.softmax_xent_backward(probs_t, tt, backend=backend),
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_huge_logits_are_finite_and_exact(dtype, backend):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    labels = np.array([1, 2, 0])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        loss, probs, t = F.softmax_xent(logits, labels, backend=backend)
        d = F.softmax_xent_backward(probs, t, backend=backend)
    assert np.isfinite(loss) and np.isfinite(probs).all() and np.isfinite(d).all()
    # losses: 2e4, log 3, log 2
    np.testing.assert_allclose(loss, (2e4 + np.log(3) + np.log(2)) / 3, rtol=1e-6)
    np.testing.assert_allclose(probs[0], [1, 0, 0], atol=1e-30)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_confident_correct_prediction_has_near_zero_loss(backend):
    # The seed's -log(p + 1e-8) would floor this at ~1e-8.
    logits = np.array([[30.0, 0.0, 0.0]])
    loss, _, _ = F.softmax_xent(logits, np.array([0]), backend=backend)
    assert 0.0 <= loss < 1e-11


def test_reference_backward_matches_finite_differences_labels():
    rng = rng_for("xent-fd")
    logits = rng.standard_normal((4, 6)) * 2
    labels = np.array([0, 5, 2, 2])

    def loss():
        probs, losses = np.empty_like(logits), np.empty(4)
        R.softmax_xent_forward_labels(probs, losses, logits, labels)
        return float(losses.mean())

    probs, losses = np.empty_like(logits), np.empty(4)
    R.softmax_xent_forward_labels(probs, losses, logits, labels)
    np.testing.assert_allclose(losses, _logsumexp_loss(logits, labels), rtol=1e-13)
    d = np.empty_like(logits)
    R.softmax_xent_backward_labels(d, probs, labels)
    assert_grad_close(d, numeric_grad(loss, logits), "dlogits")


def test_reference_backward_matches_finite_differences_targets():
    rng = rng_for("xent-fd-soft")
    logits = rng.standard_normal((3, 5))
    t = rng.random((3, 5))
    t /= t.sum(axis=1, keepdims=True)

    def loss():
        probs, losses = np.empty_like(logits), np.empty(3)
        R.softmax_xent_forward_targets(probs, losses, logits, t)
        return float(losses.mean())

    probs, losses = np.empty_like(logits), np.empty(3)
    R.softmax_xent_forward_targets(probs, losses, logits, t)
    d = np.empty_like(logits)
    R.softmax_xent_backward_targets(d, probs, t)
    assert_grad_close(d, numeric_grad(loss, logits), "dlogits")


def test_float32_is_not_promoted():
    logits, labels = _inputs((4, 6), np.float32)
    for backend in ("numba", "numpy"):
        loss, probs, t = F.softmax_xent(logits, labels, backend=backend)
        assert probs.dtype == np.float32
        assert F.softmax_xent_backward(probs, t, backend=backend).dtype == np.float32
        onehot = np.eye(6, dtype=np.float32)[labels]
        _, probs, t = F.softmax_xent(logits, onehot, backend=backend)
        assert probs.dtype == np.float32
        assert F.softmax_xent_backward(probs, t, backend=backend).dtype == np.float32


@pytest.mark.parametrize("label_dtype", [np.int32, np.uint8, np.int64])
def test_any_integer_label_dtype(label_dtype):
    logits, labels = _inputs((5, 7), np.float64)
    ref = F.softmax_xent(logits, labels)[0]
    for backend in ("numba", "numpy"):
        assert F.softmax_xent(logits, labels.astype(label_dtype), backend=backend)[0] == pytest.approx(ref)
