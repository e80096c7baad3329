"""NumPy reference for ``fastnn.kernels.softmax_xent`` (same names, same signatures)."""

import numpy as np


def _log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return z - lse


def softmax_xent_forward_labels(probs, losses, logits, labels):
    logp = _log_softmax(logits)
    probs[...] = np.exp(logp)
    losses[...] = -logp[np.arange(len(labels)), labels]


def softmax_xent_backward_labels(dlogits, probs, labels):
    n = probs.shape[0]
    dlogits[...] = probs
    dlogits[np.arange(n), labels] -= 1
    dlogits /= n


def softmax_xent_forward_targets(probs, losses, logits, targets):
    logp = _log_softmax(logits)
    probs[...] = np.exp(logp)
    losses[...] = -(targets * logp).sum(axis=1)


def softmax_xent_backward_targets(dlogits, probs, targets):
    dlogits[...] = (probs - targets) / probs.shape[0]


def _row_stats(logits):
    m = logits.max(axis=1)
    return m, np.exp(logits - m[:, None]).sum(axis=1)


def softmax_xent_loss_labels(rowmax, rowsum, losses, logits, labels):
    rowmax[...], rowsum[...] = _row_stats(logits)
    losses[...] = -_log_softmax(logits)[np.arange(len(labels)), labels]


def softmax_xent_grad_labels(dlogits, logits, rowmax, rowsum, labels):
    n = logits.shape[0]
    dlogits[...] = np.exp(logits - rowmax[:, None]) / rowsum[:, None]
    dlogits[np.arange(n), labels] -= 1
    dlogits /= n


def softmax_xent_loss_targets(rowmax, rowsum, losses, logits, targets):
    rowmax[...], rowsum[...] = _row_stats(logits)
    losses[...] = -(targets * _log_softmax(logits)).sum(axis=1)


def softmax_xent_grad_targets(dlogits, logits, rowmax, rowsum, targets):
    p = np.exp(logits - rowmax[:, None]) / rowsum[:, None]
    dlogits[...] = (p - targets) / logits.shape[0]


def softmax_xent_loss_grad_labels(dlogits, rowmax, rowsum, losses, logits, labels):
    softmax_xent_loss_labels(rowmax, rowsum, losses, logits, labels)
    softmax_xent_grad_labels(dlogits, logits, rowmax, rowsum, labels)


def softmax_xent_loss_grad_targets(dlogits, rowmax, rowsum, losses, kept, logits, targets):
    softmax_xent_loss_targets(rowmax, rowsum, losses, logits, targets)
    softmax_xent_grad_targets(dlogits, logits, rowmax, rowsum, targets)
    if kept is not targets:
        kept[...] = targets


def softmax_xent_target_rows(sums, bad, targets):
    sums[...] = targets.sum(axis=1, dtype=np.float64)
    bad[...] = (~(np.isfinite(targets) & (targets >= 0))).sum(axis=1)
