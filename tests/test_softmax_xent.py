"""fastnn.kernels.softmax_xent against fastnn.reference.softmax_xent, the
reference against finite differences and against logsumexp - z[y]."""

import contextlib
import warnings

import numpy as np
import pytest

from fastnn import functional as F
from fastnn.kernels import softmax_xent as K
from fastnn.reference import softmax_xent as R

from _helpers import (BIG, DTYPE_IDS, DTYPES, SHAPES, assert_grad_close, backends,
                      check_loss_hands_over_its_gradient, check_loss_keeps_its_targets, numeric_grad, randn,
                      rng_for, run_both)


def _inputs(shape, dtype, scale=3.0):
    rng = rng_for("xent", shape, np.dtype(dtype).name)
    logits = randn(rng, shape, dtype, scale)
    labels = rng.integers(0, shape[1], shape[0])
    return logits, labels


def _logsumexp_loss(logits, labels):
    """Per-sample logsumexp(z) - z[y] in float64, independent of fastnn."""
    z = logits.astype(np.float64)
    return np.logaddexp.reduce(z, axis=1) - z[np.arange(len(labels)), labels]


def _huge_logits(dtype):
    """Logits of +-1e4 (exp overflows without the max shift) and their labels;
    the losses are 2e4, log 3 and log 2."""
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    return logits, np.array([1, 2, 0])


@contextlib.contextmanager
def _no_float_warnings():
    """Any floating-point overflow, invalid operation or warning raises."""
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        yield


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
    logits, labels = _huge_logits(dtype)
    with _no_float_warnings():
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


# ---- the module's path: loss keeps row statistics, grad recomputes softmax


def _loss_flat(backend_fn):
    def run(logits, target):
        loss, (rowmax, rowsum), t = backend_fn(logits, target)
        return loss, rowmax, rowsum
    return run


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES + ((32, 10), BIG))
def test_loss_and_grad_match_reference_and_the_probs_path(shape, dtype):
    logits, labels = _inputs(shape, dtype)
    k_loss, r_loss = backends(F.softmax_xent_loss)
    (loss, rowmax, rowsum), _ = run_both(_loss_flat(k_loss), _loss_flat(r_loss), lambda: (logits, labels),
                                         names=["loss", "rowmax", "rowsum"])
    np.testing.assert_array_equal(rowmax, logits.max(axis=1))
    (d,), _ = run_both(*backends(F.softmax_xent_grad), lambda: (logits, (rowmax, rowsum), labels),
                       names=["dlogits"])
    assert d.dtype == dtype
    # the same values as softmax_xent + softmax_xent_backward, to a few ulp
    # (the compiler may order the row's exp-sum and (e * inv) * inv_n otherwise)
    loss_p, probs, _ = F.softmax_xent(logits, labels)
    ulp = float(np.finfo(dtype).eps)
    assert loss == pytest.approx(loss_p, rel=4 * ulp)
    np.testing.assert_allclose(d, F.softmax_xent_backward(probs, labels), rtol=4 * ulp, atol=ulp / shape[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_loss_and_grad_with_soft_targets_match_reference(dtype):
    rng = rng_for("xent-lean-soft", np.dtype(dtype).name)
    logits = randn(rng, (9, 33), dtype, 2.0)
    t = rng.random((9, 33))
    t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    k_loss, r_loss = backends(F.softmax_xent_loss)
    (loss, rowmax, rowsum), _ = run_both(_loss_flat(k_loss), _loss_flat(r_loss), lambda: (logits, t),
                                         names=["loss", "rowmax", "rowsum"])
    run_both(*backends(F.softmax_xent_grad), lambda: (logits, (rowmax, rowsum), t), names=["dlogits"])
    loss_p, probs, _ = F.softmax_xent(logits, t)
    assert loss == pytest.approx(loss_p, rel=1e-6)
    np.testing.assert_allclose(F.softmax_xent_grad(logits, (rowmax, rowsum), t),
                               F.softmax_xent_backward(probs, t), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_loss_and_grad_kernels_called_directly_match_reference(dtype):
    logits, labels = _inputs((5, 33), dtype)
    n, c = logits.shape
    onehot = np.eye(c, dtype=dtype)[labels]
    for loss_k, loss_r, grad_k, grad_r, target in (
            (K.softmax_xent_loss_labels, R.softmax_xent_loss_labels,
             K.softmax_xent_grad_labels, R.softmax_xent_grad_labels, labels),
            (K.softmax_xent_loss_targets, R.softmax_xent_loss_targets,
             K.softmax_xent_grad_targets, R.softmax_xent_grad_targets, onehot)):
        (rowmax, rowsum, _), _ = run_both(
            loss_k, loss_r, lambda: (np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype), logits, target),
            names=["rowmax", "rowsum", "losses"], n_out=3)
        run_both(grad_k, grad_r, lambda: (np.empty((n, c), dtype), logits, rowmax, rowsum, target),
                 names=["dlogits"], n_out=1)


@pytest.mark.parametrize("targets", [False, True], ids=["labels", "targets"])
def test_reference_grad_matches_finite_differences(targets):
    """The grad reference and the one-pass loss-and-grad reference."""
    rng = rng_for("xent-lean-fd", targets)
    logits = rng.standard_normal((4, 6)) * 2
    if targets:
        y = rng.random((4, 6))
        y /= y.sum(axis=1, keepdims=True)
        loss_fn, grad_fn = R.softmax_xent_loss_targets, R.softmax_xent_grad_targets
        both_fn = R.softmax_xent_loss_grad_targets
    else:
        y = np.array([0, 5, 2, 2])
        loss_fn, grad_fn = R.softmax_xent_loss_labels, R.softmax_xent_grad_labels
        both_fn = R.softmax_xent_loss_grad_labels
    rowmax, rowsum, losses = np.empty(4), np.empty(4), np.empty(4)

    def loss():
        loss_fn(rowmax, rowsum, losses, logits, y)
        return float(losses.mean())

    loss()
    d = np.empty_like(logits)
    grad_fn(d, logits, rowmax.copy(), rowsum.copy(), y)
    numeric = numeric_grad(loss, logits)
    assert_grad_close(d, numeric, "dlogits")
    both_fn(d, np.empty(4), np.empty(4), np.empty(4), *((y,) if targets else ()), logits, y)
    assert_grad_close(d, numeric, "dlogits (loss_grad)")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_loss_and_grad_with_huge_logits_are_finite(dtype, backend):
    logits, labels = _huge_logits(dtype)
    with _no_float_warnings():
        loss, stats, t = F.softmax_xent_loss(logits, labels, backend=backend)
        d = F.softmax_xent_grad(logits, stats, t, backend=backend)
    np.testing.assert_allclose(loss, (2e4 + np.log(3) + np.log(2)) / 3, rtol=1e-6)
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d[0], np.array([1, -1, 0]) / 3, atol=1e-7)


def test_grad_rejects_stats_that_do_not_fit():
    logits, labels = _inputs((4, 6), np.float32)
    _, (rowmax, rowsum), t = F.softmax_xent_loss(logits, labels)
    with pytest.raises(TypeError, match="stats"):
        F.softmax_xent_grad(logits, rowmax, t)
    with pytest.raises(ValueError, match="rowmax and rowsum"):
        F.softmax_xent_grad(logits, (rowmax[:3], rowsum[:3]), t)
    with pytest.raises(TypeError):
        F.softmax_xent_grad(logits, (rowmax.astype(np.float64), rowsum), t)
    with pytest.raises(ValueError):
        F.softmax_xent_grad(logits, (rowmax, rowsum), np.array([0, 1, 2, 6]))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_module_recomputes_the_probabilities_of_the_probs_path(backend):
    from fastnn import nn

    logits, labels = _inputs((16, 10), np.float32)
    mod = nn.SoftmaxCrossEntropy()
    mod.backend = backend
    assert mod.probs is None
    loss = mod.forward(logits, labels)
    loss_p, probs, t = F.softmax_xent(logits, labels, backend=backend)
    assert loss == pytest.approx(loss_p, rel=1e-6)
    np.testing.assert_allclose(mod.probs, probs, rtol=1e-5, atol=1e-12)
    assert mod.probs.dtype == np.float32
    np.testing.assert_allclose(mod.backward(), F.softmax_xent_backward(probs, t, backend=backend),
                               rtol=1e-5, atol=1e-12)


# ---- the module's training path: loss and gradient in one pass


def _loss_grad_flat(backend_fn):
    def run(logits, target):
        loss, d, (rowmax, rowsum), t = backend_fn(logits, target)
        return loss, d, rowmax, rowsum
    return run


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES + ((32, 10), BIG))
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "targets"])
def test_loss_grad_matches_reference_and_the_two_pass_path(shape, dtype, soft):
    logits, labels = _inputs(shape, dtype)
    target = labels
    if soft:
        t = rng_for("xent-lg-soft", shape).random(shape)
        target = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    (loss, d, rowmax, rowsum), _ = run_both(*map(_loss_grad_flat, backends(F.softmax_xent_loss_grad)),
                                            lambda: (logits, target),
                                            names=["loss", "dlogits", "rowmax", "rowsum"])
    assert d.dtype == dtype and d.shape == shape
    np.testing.assert_array_equal(rowmax, logits.max(axis=1))
    # the loss and grad kernels' values: the same float operations, but the
    # compiler may order a row's exp-sum otherwise in each kernel
    loss2, stats2, t2 = F.softmax_xent_loss(logits, target)
    ulp = float(np.finfo(dtype).eps)
    assert loss == pytest.approx(loss2, rel=4 * ulp)
    np.testing.assert_allclose(rowsum, stats2[1], rtol=4 * ulp)
    np.testing.assert_allclose(d, F.softmax_xent_grad(logits, stats2, t2), rtol=8 * ulp, atol=ulp / shape[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_loss_grad_kernels_called_directly_match_reference(dtype):
    logits, labels = _inputs((5, 33), dtype)
    n, c = logits.shape
    onehot = np.eye(c, dtype=dtype)[labels]
    run_both(K.softmax_xent_loss_grad_labels, R.softmax_xent_loss_grad_labels,
             lambda: (np.empty((n, c), dtype), np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype),
                      logits, labels),
             names=["dlogits", "rowmax", "rowsum", "losses"], n_out=4)
    # (N, C) targets: also a copy of them, written in the same pass
    (*_, kept), _ = run_both(K.softmax_xent_loss_grad_targets, R.softmax_xent_loss_grad_targets,
                             lambda: (np.empty((n, c), dtype), np.empty(n, dtype), np.empty(n, dtype),
                                      np.empty(n, dtype), np.full((n, c), np.nan, dtype), logits, onehot),
                             names=["dlogits", "rowmax", "rowsum", "losses", "kept"], n_out=5)
    np.testing.assert_array_equal(kept, onehot)
    for build in ("serial", "parallel"):  # kept = the targets themselves: nothing written to them
        k = getattr(K.softmax_xent_loss_grad_targets, build)
        outs = [np.full((n, c), np.nan, dtype)] + [np.full(n, np.nan, dtype) for _ in range(3)]
        k(*outs, np.full((n, c), np.nan, dtype), logits, onehot)
        targets = onehot.copy()
        outs2 = [np.full_like(a, np.nan) for a in outs]
        k(*outs2, targets, logits, targets)
        np.testing.assert_array_equal(targets, onehot)
        for a, b in zip(outs2, outs):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_loss_grad_with_huge_logits_is_finite(dtype, backend):
    logits, labels = _huge_logits(dtype)
    with _no_float_warnings():
        loss, d, _, _ = F.softmax_xent_loss_grad(logits, labels, backend=backend)
    np.testing.assert_allclose(loss, (2e4 + np.log(3) + np.log(2)) / 3, rtol=1e-6)
    np.testing.assert_allclose(d[0], np.array([1, -1, 0]) / 3, atol=1e-7)
    assert np.isfinite(d).all()


def test_loss_grad_checks_its_arguments():
    logits, labels = _inputs((4, 6), np.float32)
    with pytest.raises(ValueError, match="y"):
        F.softmax_xent_loss_grad(logits, np.array([0, 1, 2, 6]))
    with pytest.raises(ValueError, match="out"):
        F.softmax_xent_loss_grad(logits, labels, out=np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="out"):
        F.softmax_xent_loss_grad(logits, labels, out=logits)  # the gradient would overwrite its input
    d = np.empty((4, 6), np.float32)
    assert F.softmax_xent_loss_grad(logits, labels, out=d)[1] is d


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "targets"])
def test_module_training_and_eval_forwards_give_the_same_backward(backend, soft):
    """A training forward computes the gradient with the loss and the next
    backward hands it over; after an eval forward, or for a second backward,
    the backward recomputes it: the same values either way."""
    from fastnn import nn

    logits, labels = _inputs((16, 10), np.float32)
    target = np.eye(10, dtype=np.float32)[labels] if soft else labels
    mod = nn.SoftmaxCrossEntropy()
    mod.backend = backend
    d = check_loss_hands_over_its_gradient(mod, (logits, target), rtol=1e-5, atol=1e-9)
    mod.forward(logits, target)
    with pytest.raises(TypeError, match="dout"):
        mod.backward("x")
    np.testing.assert_allclose(mod.backward(), d, rtol=1e-5, atol=1e-9)  # still the forward's


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "targets"])
def test_module_keeps_its_targets_when_the_caller_refills_its_buffer(soft):
    from fastnn import nn

    logits, labels = _inputs((48, 10), np.float32)  # three batches of 16 rows
    target = np.eye(10, dtype=np.float32)[labels] if soft else labels
    check_loss_keeps_its_targets(nn.SoftmaxCrossEntropy, np.split(logits, 3), np.split(target, 3),
                                 rtol=1e-6, atol=1e-9)


def _max_rows(dtype):
    """Rows whose max sits at the start, at the end, past a vector tail, among
    negatives only, at +-0.0, at +-inf, among subnormals; lengths 1 to 37."""
    finfo = np.finfo(dtype)
    rng = rng_for("rowmax", np.dtype(dtype).name)
    rows = [np.array([-2.5], dtype), np.array([finfo.max, 0, -finfo.max], dtype),
            np.array([-0.0, 0.0, -0.0], dtype), np.array([-0.0, -0.0], dtype),
            np.array([-np.inf, -1e30, -np.inf], dtype), np.array([1.0, np.inf, 2.0], dtype),
            np.array([-finfo.smallest_subnormal, finfo.smallest_subnormal, -0.0], dtype),
            -np.arange(1, 38, dtype=dtype), np.arange(37, dtype=dtype) - 100]
    rows += [randn(rng, (n,), dtype, 3.0) - 10 for n in (2, 7, 15, 16, 17, 31, 33)]
    return rows


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_row_max_is_the_rows_max(dtype):
    """The loss kernels' rowmax (a max over kernels._math.ordered_key) is
    np.max of each row, +0.0 where +0.0 and -0.0 tie."""
    for row in _max_rows(dtype):
        logits = row[None, :]
        for run in (K.softmax_xent_loss_labels.serial, K.softmax_xent_loss_labels.parallel):
            rowmax, rowsum, losses = np.empty(1, dtype), np.empty(1, dtype), np.empty(1)
            with np.errstate(invalid="ignore"):
                run(rowmax, rowsum, losses, logits, np.array([0]))
            assert rowmax[0] == row.max(), row
            if rowmax[0] == 0:
                assert np.signbit(rowmax[0]) == np.signbit(row).all(), row


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_a_nan_logit_makes_its_row_nan_and_leaves_the_others(dtype):
    """A NaN of either sign (the key puts one above +inf, the other below
    -inf) gives its row a NaN loss and gradient; the other rows are unchanged."""
    logits, labels = _inputs((4, 19), dtype)
    nans = logits.copy()
    nans[1, 5] = np.nan
    nans[2, 17] = -np.nan
    assert not np.signbit(nans[1, 5]) and np.signbit(nans[2, 17])
    n, c = logits.shape
    for run in (K.softmax_xent_loss_grad_labels.serial, K.softmax_xent_loss_grad_labels.parallel):
        outs = []
        for z in (logits, nans):
            d, rowmax, rowsum, losses = np.empty((n, c), dtype), np.empty(n, dtype), np.empty(n, dtype), np.empty(n)
            with np.errstate(invalid="ignore"):
                run(d, rowmax, rowsum, losses, z, labels)
            outs.append((d, losses))
        (d, losses), (d_nan, losses_nan) = outs
        assert np.isnan(losses_nan[1:3]).all() and np.isnan(d_nan[1:3]).all()
        np.testing.assert_array_equal(losses_nan[[0, 3]], losses[[0, 3]])
        np.testing.assert_array_equal(d_nan[[0, 3]], d[[0, 3]])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_ordered_key_orders_as_the_floats_and_inverts(dtype):
    """kernels._math.ordered_key: integer order is float order (-0.0 just below
    +0.0), and from_ordered_key gives back the same bits."""
    from numba import njit

    from fastnn.kernels._math import from_ordered_key, ordered_key

    @njit
    def keys_and_back(k, back, x):
        for i in range(x.shape[0]):
            k[i] = ordered_key(x[i])
            back[i] = from_ordered_key(k[i])

    finfo = np.finfo(dtype)
    x = np.array([-np.inf, -finfo.max, -1.5, -1.0, -finfo.tiny, -finfo.smallest_subnormal, -0.0, 0.0,
                  finfo.smallest_subnormal, finfo.tiny, 1.0, 1.5, finfo.max, np.inf], dtype)
    k, back = np.empty(len(x), np.int32 if dtype == np.float32 else np.int64), np.empty_like(x)
    keys_and_back(k, back, x)
    assert (np.diff(k) > 0).all()
    np.testing.assert_array_equal(back.view(k.dtype), x.view(k.dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_exp_nonpos_is_within_a_few_eps_of_exp(dtype):
    """kernels._math.exp_nonpos (the exp of softmax, sigmoid and BCE), compiled with
    the kernels' flags, against float64 np.exp on a dense grid of [lo, 0]: exact 1 at
    0, exact 0 below lo and at -inf, NaN in, NaN out. The error grows with |x|
    (fast-math folds the two-part ln 2 of the range reduction into one constant):
    measured 2.5 eps in float32 (at -86) and 108 eps in float64 (at -707)."""
    from numba import njit

    from fastnn._config import NJIT_FLAGS
    from fastnn.kernels._math import exp_nonpos

    @njit(**{**NJIT_FLAGS, "cache": False})
    def evaluate(v, out):
        for i in range(v.shape[0]):
            out[i] = exp_nonpos(v[i])

    lo, bound = (-87.0, 3) if dtype == np.float32 else (-708.0, 128)
    v = np.concatenate([np.linspace(lo, 0, 400_001), -np.geomspace(1e-30, -lo, 20_001),
                        np.arange(-1, 2) * 0.5 + np.round(lo / 2)]).astype(dtype)
    out = np.empty_like(v)
    evaluate(v, out)
    ref = np.exp(v.astype(np.float64))
    rel = np.abs(out - ref) / ref
    assert rel.max() <= bound * np.finfo(dtype).eps + np.finfo(np.float64).eps
    edge = np.array([0.0, -0.0, lo - 0.5, -1e30, -np.inf, np.nan], dtype)
    out = np.empty_like(edge)
    evaluate(edge, out)
    np.testing.assert_array_equal(out[:5], [1, 1, 0, 0, 0])
    assert np.isnan(out[5])


def test_prefetch_next_emits_prefetches_and_changes_nothing():
    """kernels._prefetch: the hint compiles to prefetch instructions for both halves
    of the next row, contiguous, strided or empty, in both dtypes, and leaves the
    array as it was."""
    import re

    from numba import njit

    from fastnn._config import NJIT_FLAGS
    from fastnn.kernels._prefetch import prefetch_next

    @njit(**{**NJIT_FLAGS, "cache": False})
    def touch_all(a):
        for i in range(a.shape[0]):
            prefetch_next(a, i, 0)
            prefetch_next(a, i, 1)

    for dtype in DTYPES:
        for a in (np.arange(40.0, dtype=dtype).reshape(4, 10), np.arange(80.0, dtype=dtype).reshape(4, 20)[:, ::2],
                  np.empty((3, 0), dtype)):
            before = a.copy()
            touch_all(a)
            np.testing.assert_array_equal(a, before)
        asm = "\n".join(touch_all.inspect_asm().values())
        assert re.search(r"\bprefetch(t0|nta|t1|t2)?\b", asm), "no prefetch instruction emitted"


@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradient_kernels_in_place_equal_out_of_place(dtype, build):
    """The backward and grad kernels with dlogits = probs, logits or the
    targets (their own loops, ``_config.same_data``): the same values, to
    a few ulp (the grad's exps may be split between vector and scalar code
    differently)."""
    logits, labels = _inputs((37, 11), dtype)
    targets = np.eye(11, dtype=dtype)[labels] * 0.75 + 0.25 / 11
    n = logits.shape[0]
    rowmax, rowsum, losses = np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype)
    kern = {name: getattr(getattr(K, name), build) for name in (
        "softmax_xent_loss_labels", "softmax_xent_backward_labels", "softmax_xent_backward_targets",
        "softmax_xent_grad_labels", "softmax_xent_grad_targets")}
    kern["softmax_xent_loss_labels"](rowmax, rowsum, losses, logits, labels)
    probs = np.exp(logits - rowmax[:, None]) / rowsum[:, None]
    cases = [("softmax_xent_backward_labels", (probs, labels), 0),
             ("softmax_xent_backward_targets", (probs, targets), 0),
             ("softmax_xent_backward_targets", (probs, targets), 1),
             ("softmax_xent_grad_labels", (logits, rowmax, rowsum, labels), 0),
             ("softmax_xent_grad_targets", (logits, rowmax, rowsum, targets), 0),
             ("softmax_xent_grad_targets", (logits, rowmax, rowsum, targets), 3)]
    for name, args, k in cases:  # k: the argument that dlogits replaces
        want = np.empty_like(logits)
        kern[name](want, *args)
        args = list(args)
        args[k] = args[k].copy()
        kern[name](args[k], *args)
        ulp = float(np.finfo(dtype).eps)
        np.testing.assert_allclose(args[k], want, rtol=4 * ulp, atol=4 * ulp * float(np.abs(want).max()),
                                   err_msg=f"{name}, dlogits = argument {k}")


@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_target_rows_kernel_counts_every_bad_entry(dtype, build):
    """The (N, C) targets' check: each row's sum and its count of NaN,
    infinite and negative entries, against the reference; -0.0, subnormals
    and the largest float are good entries."""
    rng = rng_for("target-rows", np.dtype(dtype).name)
    finfo = np.finfo(dtype)
    t = rng.random((37, 19)).astype(dtype)
    specials = [np.nan, np.inf, -np.inf, -1.0, -finfo.smallest_subnormal, -0.0, finfo.smallest_subnormal, finfo.max]
    for k, v in enumerate(specials):  # rows 0-7: one special each, at a row-specific column
        t[k, (3 * k) % 19] = v
    t[8, :] = np.nan  # a whole row bad
    t[9, ::2] = -2.0
    sums, bad = np.full(37, np.nan), np.full(37, -1, np.int64)
    getattr(K.softmax_xent_target_rows, build)(sums, bad, t)
    sums_ref, bad_ref = np.empty(37), np.empty(37, np.int64)
    R.softmax_xent_target_rows(sums_ref, bad_ref, t)
    np.testing.assert_array_equal(bad, bad_ref)
    assert list(bad[:10]) == [1, 1, 1, 1, 1, 0, 0, 0, 19, 10] and not bad[10:].any()
    good = np.isfinite(sums_ref)
    np.testing.assert_allclose(sums[good], sums_ref[good], rtol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_bad_soft_targets_are_refused_before_the_loss_kernel(backend):
    from fastnn import nn

    logits = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    good = np.full((3, 4), 0.25, np.float32)
    mod = nn.SoftmaxCrossEntropy()
    mod.backend = backend
    mod.forward(logits, good)
    want = mod.backward()
    for v in (np.nan, np.inf, -0.5):
        t = good.copy()
        t[2, 1] = v
        with pytest.raises(ValueError, match="y must be finite and non-negative"):
            F.softmax_xent_loss_grad(logits, t, backend=backend)
        with pytest.raises(ValueError, match="y must be finite and non-negative"):
            mod.forward(logits, t)
        # refused before the kernel that would write the module's copy of the targets
        np.testing.assert_array_equal(mod.backward(), want)
    t = good.copy()
    t[1] *= 1.01
    with pytest.raises(ValueError, match="row 1 sums to 1.01"):
        F.softmax_xent(logits, t, backend=backend)
    assert F.softmax_xent_loss_grad(np.zeros((3, 4), np.float32), good, backend=backend)[0] == pytest.approx(
        np.log(4))
