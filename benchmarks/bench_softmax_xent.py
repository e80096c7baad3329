"""Softmax + cross-entropy: numba vs NumPy, forward and backward, with
integer labels and with soft (N, C) targets. Shapes are (N, C)."""

import numpy as np

from fastnn.kernels import softmax_xent as K
from fastnn.reference import softmax_xent as R

SHAPES = {"small": (64, 10), "medium": (1024, 1000), "large": (4096, 1000)}


def _logits_probs(randn, rng, case):
    n, c = case.shape
    logits = randn(n, c, scale=3.0)
    labels = rng.integers(0, c, size=n, dtype=np.int64)
    probs = np.empty_like(logits)
    R.softmax_xent_forward_labels(probs, np.empty(n, case.dtype), logits, labels)
    return logits, labels, probs


def _soft_targets(randn, case):
    z = randn(*case.shape)
    t = np.exp(z - z.max(axis=1, keepdims=True))
    return (t / t.sum(axis=1, keepdims=True)).astype(case.dtype)


def test_softmax_xent_forward_labels(compare_and_time, randn, rng, case):
    logits, labels, _ = _logits_probs(randn, rng, case)
    outputs = {"probs": np.empty_like(logits), "losses": np.empty(case.shape[0], case.dtype)}
    compare_and_time("softmax_xent_forward_labels", K.softmax_xent_forward_labels,
                     R.softmax_xent_forward_labels, outputs, (logits, labels))


def test_softmax_xent_backward_labels(compare_and_time, randn, rng, case):
    _, labels, probs = _logits_probs(randn, rng, case)
    compare_and_time("softmax_xent_backward_labels", K.softmax_xent_backward_labels,
                     R.softmax_xent_backward_labels, {"dlogits": np.empty_like(probs)},
                     (probs, labels))


def test_softmax_xent_forward_targets(compare_and_time, randn, rng, case):
    logits, _, _ = _logits_probs(randn, rng, case)
    targets = _soft_targets(randn, case)
    outputs = {"probs": np.empty_like(logits), "losses": np.empty(case.shape[0], case.dtype)}
    compare_and_time("softmax_xent_forward_targets", K.softmax_xent_forward_targets,
                     R.softmax_xent_forward_targets, outputs, (logits, targets))


def test_softmax_xent_backward_targets(compare_and_time, randn, rng, case):
    _, _, probs = _logits_probs(randn, rng, case)
    targets = _soft_targets(randn, case)
    compare_and_time("softmax_xent_backward_targets", K.softmax_xent_backward_targets,
                     R.softmax_xent_backward_targets, {"dlogits": np.empty_like(probs)},
                     (probs, targets))


def _row_stats(logits, labels, case):
    n = case.shape[0]
    rowmax, rowsum = np.empty(n, case.dtype), np.empty(n, case.dtype)
    R.softmax_xent_loss_labels(rowmax, rowsum, np.empty(n, case.dtype), logits, labels)
    return rowmax, rowsum


def test_softmax_xent_loss_labels(compare_and_time, randn, rng, case):
    logits, labels, _ = _logits_probs(randn, rng, case)
    n = case.shape[0]
    outputs = {"rowmax": np.empty(n, case.dtype), "rowsum": np.empty(n, case.dtype),
               "losses": np.empty(n, case.dtype)}
    compare_and_time("softmax_xent_loss_labels", K.softmax_xent_loss_labels,
                     R.softmax_xent_loss_labels, outputs, (logits, labels))


def test_softmax_xent_grad_labels(compare_and_time, randn, rng, case):
    logits, labels, _ = _logits_probs(randn, rng, case)
    rowmax, rowsum = _row_stats(logits, labels, case)
    compare_and_time("softmax_xent_grad_labels", K.softmax_xent_grad_labels,
                     R.softmax_xent_grad_labels, {"dlogits": np.empty_like(logits)},
                     (logits, rowmax, rowsum, labels))


def test_softmax_xent_loss_grad_labels(compare_and_time, randn, rng, case):
    logits, labels, _ = _logits_probs(randn, rng, case)
    n = case.shape[0]
    outputs = {"dlogits": np.empty_like(logits), "rowmax": np.empty(n, case.dtype),
               "rowsum": np.empty(n, case.dtype), "losses": np.empty(n, case.dtype)}
    compare_and_time("softmax_xent_loss_grad_labels", K.softmax_xent_loss_grad_labels,
                     R.softmax_xent_loss_grad_labels, outputs, (logits, labels))


def test_softmax_xent_loss_grad_targets(compare_and_time, randn, rng, case):
    logits, _, _ = _logits_probs(randn, rng, case)
    targets = _soft_targets(randn, case)
    n = case.shape[0]
    outputs = {"dlogits": np.empty_like(logits), "rowmax": np.empty(n, case.dtype),
               "rowsum": np.empty(n, case.dtype), "losses": np.empty(n, case.dtype),
               "kept": np.empty_like(targets)}
    compare_and_time("softmax_xent_loss_grad_targets", K.softmax_xent_loss_grad_targets,
                     R.softmax_xent_loss_grad_targets, outputs, (logits, targets))


def test_softmax_xent_target_rows(compare_and_time, randn, case):
    """The check of (N, C) targets that runs before their loss kernels."""
    targets = _soft_targets(randn, case)
    n = case.shape[0]
    compare_and_time("softmax_xent_target_rows", K.softmax_xent_target_rows, R.softmax_xent_target_rows,
                     {"sums": np.empty(n, np.float64), "bad": np.empty(n, np.int64)}, (targets,))
