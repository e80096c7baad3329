"""NumPy reference for ``fastnn.kernels.losses`` (same names, same signatures)."""

import numpy as np


def mse_forward(losses, pred, target):
    d = pred - target
    losses[...] = (d * d).sum(axis=1, dtype=np.float64)


def mse_backward(dpred, pred, target, scale):
    dpred[...] = 2.0 * scale * (pred - target)


def l1_forward(losses, pred, target):
    losses[...] = np.abs(pred - target).sum(axis=1, dtype=np.float64)


def l1_backward(dpred, pred, target, scale):
    dpred[...] = scale * np.sign(pred - target)


def huber_forward(losses, pred, target, delta):
    a = np.abs(pred - target)
    losses[...] = np.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta)).sum(axis=1, dtype=np.float64)


def huber_backward(dpred, pred, target, delta, scale):
    dpred[...] = scale * np.clip(pred - target, -delta, delta)


def _keep(kept, target):
    if kept is not target:
        kept[...] = target


def mse_forward_backward(dpred, losses, kept, pred, target, scale):
    mse_forward(losses, pred, target)
    mse_backward(dpred, pred, target, scale)
    _keep(kept, target)


def l1_forward_backward(dpred, losses, kept, pred, target, scale):
    l1_forward(losses, pred, target)
    l1_backward(dpred, pred, target, scale)
    _keep(kept, target)


def huber_forward_backward(dpred, losses, kept, pred, target, delta, scale):
    huber_forward(losses, pred, target, delta)
    huber_backward(dpred, pred, target, delta, scale)
    _keep(kept, target)


def bce_logits_forward(losses, logits, target, pos_weight):
    x, t = logits.astype(np.float64), target.astype(np.float64)
    w = 1 + (pos_weight - 1) * t
    losses[...] = ((1 - t) * x + w * (np.logaddexp(0, -x))).sum(axis=1)


def bce_logits_backward(dlogits, logits, target, pos_weight, scale):
    x, t = logits.astype(np.float64), target.astype(np.float64)
    w = 1 + (pos_weight - 1) * t
    sig_neg = 0.5 * (1 - np.tanh(0.5 * x))  # sigmoid(-x), overflow-free
    dlogits[...] = scale * ((1 - t) - w * sig_neg)


def bce_logits_forward_backward(dlogits, losses, kept, logits, target, pos_weight, scale):
    bce_logits_forward(losses, logits, target, pos_weight)
    bce_logits_backward(dlogits, logits, target, pos_weight, scale)
    _keep(kept, target)
