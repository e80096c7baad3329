"""Pointwise losses: MSE, L1, Huber and binary cross-entropy on logits.

Shapes: ``pred, target: (N, C)`` (predictions or logits and their targets,
same dtype), ``losses: (N,)`` float64, the sum of the row's elementwise
losses (the front divides by N*C for ``reduction="mean"``). Backward writes
``dpred = scale * d(loss)/d(pred)`` (overwritten), ``scale`` being 1/(N*C)
for the mean and 1 for the sum.

* MSE: ``(p - t)^2``; L1: ``|p - t|`` (gradient sign(p - t), 0 at 0);
  Huber: ``0.5 d^2`` for ``|d| <= delta``, else ``delta (|d| - 0.5 delta)``.
* BCE with logits, ``pos_weight: (C,)``: ``w = 1 + (pos_weight - 1) t``,
  ``loss = (1 - t) x + w log(1 + exp(-x))``, computed as
  ``(1 - t) x + w (log1p(exp(-|x|)) + max(-x, 0))`` so that no exp
  overflows; gradient ``(1 - t) - w sigmoid(-x)``.

``<kind>_forward_backward(dpred, losses, kept, pred, target, [delta |
pos_weight,] scale)`` computes both in one pass, the predictions and
targets read once (BCE: exp(-|x|) once per element), and writes a copy of
the targets to ``kept`` on the way (``kept`` = ``target`` itself: no copy):
the loss modules' forward in training mode, whose backward then has
nothing left to compute, and whose own copy of the targets (for a later
backward) costs a write instead of a single-threaded ``np.copyto``.

The backward kernels may run in place (``dpred`` the predictions' or the
targets' memory): each passes the one array for both then
(``_config.same_data``), so that the loop runs vectorised.
"""

import numpy as np
from numba import prange

from .._config import is_float64, jit_helper, kernel, same_data, typed
from ._math import exp_nonpos, log1p_unit
from ._reduce import chunk_rows, row_chunk_count


@kernel
def mse_forward(losses, pred, target):
    for i in prange(pred.shape[0]):
        acc = 0.0
        for j in range(pred.shape[1]):
            d = pred[i, j] - target[i, j]
            acc += d * d
        losses[i] = acc


@jit_helper
def _mse_backward(dpred, pred, target, scale):
    s = typed(pred, 2.0 * scale)
    for i in prange(pred.shape[0]):
        for j in range(pred.shape[1]):
            dpred[i, j] = s * (pred[i, j] - target[i, j])


@kernel
def mse_backward(dpred, pred, target, scale):
    if same_data(dpred, pred):  # in place: one array for both (see _config.same_data)
        _mse_backward(dpred, dpred, target, scale)
    elif same_data(dpred, target):
        _mse_backward(dpred, pred, dpred, scale)
    else:
        _mse_backward(dpred, pred, target, scale)


@jit_helper
def _mse_rows(dpred, losses, kept, pred, target, scale, keep):
    s = typed(pred, 2.0 * scale)
    for i in prange(pred.shape[0]):
        acc = 0.0
        for j in range(pred.shape[1]):
            t = target[i, j]
            d = pred[i, j] - t
            acc += d * d
            dpred[i, j] = s * d
            if keep:
                kept[i, j] = t
        losses[i] = acc


@kernel
def mse_forward_backward(dpred, losses, kept, pred, target, scale):
    if same_data(kept, target):  # nothing to copy
        _mse_rows(dpred, losses, kept, pred, target, scale, False)
    else:
        _mse_rows(dpred, losses, kept, pred, target, scale, True)


@jit_helper
def _l1_grad(d, s):
    """One element's s * sign(d), 0 at d = 0 (the backward and the one-pass kernel)."""
    zero = typed(d, 0.0)
    return s if d > zero else (-s if d < zero else zero)


@kernel
def l1_forward(losses, pred, target):
    for i in prange(pred.shape[0]):
        acc = 0.0
        for j in range(pred.shape[1]):
            acc += abs(pred[i, j] - target[i, j])
        losses[i] = acc


@jit_helper
def _l1_backward(dpred, pred, target, scale):
    s = typed(pred, scale)
    for i in prange(pred.shape[0]):
        for j in range(pred.shape[1]):
            dpred[i, j] = _l1_grad(pred[i, j] - target[i, j], s)


@kernel
def l1_backward(dpred, pred, target, scale):
    if same_data(dpred, pred):  # in place: one array for both (see _config.same_data)
        _l1_backward(dpred, dpred, target, scale)
    elif same_data(dpred, target):
        _l1_backward(dpred, pred, dpred, scale)
    else:
        _l1_backward(dpred, pred, target, scale)


@jit_helper
def _l1_rows(dpred, losses, kept, pred, target, scale, keep):
    s = typed(pred, scale)
    for i in prange(pred.shape[0]):
        acc = 0.0
        for j in range(pred.shape[1]):
            t = target[i, j]
            d = pred[i, j] - t
            acc += abs(d)
            dpred[i, j] = _l1_grad(d, s)
            if keep:
                kept[i, j] = t
        losses[i] = acc


@kernel
def l1_forward_backward(dpred, losses, kept, pred, target, scale):
    if same_data(kept, target):  # nothing to copy
        _l1_rows(dpred, losses, kept, pred, target, scale, False)
    else:
        _l1_rows(dpred, losses, kept, pred, target, scale, True)


@jit_helper
def _huber_loss(d, dl):
    """One element's loss, d = pred - target, dl = delta."""
    half = typed(d, 0.5)
    a = abs(d)
    return half * a * a if a <= dl else dl * (a - half * dl)


@jit_helper
def _huber_clip(d, dl):
    """d clipped to [-dl, dl]: one element's gradient before the scale."""
    if d > dl:
        d = dl
    elif d < -dl:
        d = -dl
    return d


@kernel
def huber_forward(losses, pred, target, delta):
    dl = typed(pred, delta)
    for i in prange(pred.shape[0]):
        acc = 0.0
        for j in range(pred.shape[1]):
            acc += _huber_loss(pred[i, j] - target[i, j], dl)
        losses[i] = acc


@jit_helper
def _huber_backward(dpred, pred, target, delta, scale):
    s = typed(pred, scale)
    dl = typed(pred, delta)
    for i in prange(pred.shape[0]):
        for j in range(pred.shape[1]):
            dpred[i, j] = s * _huber_clip(pred[i, j] - target[i, j], dl)


@kernel
def huber_backward(dpred, pred, target, delta, scale):
    if same_data(dpred, pred):  # in place: one array for both (see _config.same_data)
        _huber_backward(dpred, dpred, target, delta, scale)
    elif same_data(dpred, target):
        _huber_backward(dpred, pred, dpred, delta, scale)
    else:
        _huber_backward(dpred, pred, target, delta, scale)


@jit_helper
def _huber_rows(dpred, losses, kept, pred, target, delta, scale, keep):
    s = typed(pred, scale)
    dl = typed(pred, delta)
    for i in prange(pred.shape[0]):
        acc = 0.0
        for j in range(pred.shape[1]):
            t = target[i, j]
            d = pred[i, j] - t
            acc += _huber_loss(d, dl)
            dpred[i, j] = s * _huber_clip(d, dl)
            if keep:
                kept[i, j] = t
        losses[i] = acc


@kernel
def huber_forward_backward(dpred, losses, kept, pred, target, delta, scale):
    if same_data(kept, target):  # nothing to copy
        _huber_rows(dpred, losses, kept, pred, target, delta, scale, False)
    else:
        _huber_rows(dpred, losses, kept, pred, target, delta, scale, True)


@jit_helper
def _bce_loss(x, t, w, e):
    """One element's loss; e = exp(-|x|)."""
    one = typed(x, 1.0)
    return (one - t) * x + w * (log1p_unit(e) + max(-x, typed(x, 0.0)))


@jit_helper
def _bce_grad(x, t, w, e):
    """One element's d(loss)/dx; e = exp(-|x|), so that sigmoid(-x) = 1 / (1 + e)
    or e / (1 + e) never overflows."""
    one = typed(x, 1.0)
    sig_neg = one / (one + e) if x < 0 else e / (one + e)
    return (one - t) - w * sig_neg


# Rows at least this long (one 16-lane vector) sum their float32 losses
# from a buffer (``_bce_rows``).
_BUFFER_MIN_COLS = 16


@jit_helper
def _bce_rows(dlogits, losses, kept, logits, target, pos_weight, s, grad, keep):
    """losses[i] = row i's summed loss in float64; with ``grad`` also
    dlogits = s * d(loss)/d(logits), exp(-|x|) computed once; with ``keep``
    also kept = target.

    float32 writes each row's losses to a buffer and sums it afterwards: a
    float64 accumulator inside the element loop made LLVM vectorise that loop
    at 8 float32 lanes (for the float64 adds) instead of 16, and the exp, log
    and two divisions per element made the loop's width its speed (forward +
    backward of (4096, 1024), 2 threads: 1.96 -> 1.19 ms). The rows go in
    chunks, one buffer a chunk. float64 keeps the accumulator in the loop (8
    lanes either way; the buffer cost it 10-19%), and so do rows shorter
    than 16, where the buffer cost more than the width saved ((1024, 1) 11.7
    against 10.5 us, (1024, 4) 13.5 against 10.2). Their test reads the width
    from pos_weight (C,), not from logits: told that the rows are short, LLVM
    stopped vectorising their loop ((1024, 4) 52 us)."""
    n, d = logits.shape
    one = typed(logits, 1.0)
    if is_float64(logits) or pos_weight.shape[0] < _BUFFER_MIN_COLS:
        for i in prange(n):
            acc = 0.0
            for j in range(d):
                x = logits[i, j]
                t = target[i, j]
                w = one + (pos_weight[j] - one) * t
                e = exp_nonpos(-abs(x))
                acc += _bce_loss(x, t, w, e)
                if grad:
                    dlogits[i, j] = s * _bce_grad(x, t, w, e)
                if keep:
                    kept[i, j] = t
            losses[i] = acc
    else:
        nchunks = row_chunk_count(n)
        for c in prange(nchunks):
            i0, i1 = chunk_rows(c, n, nchunks)
            buf = np.empty(d, dtype=logits.dtype)
            for i in range(i0, i1):
                for j in range(d):
                    x = logits[i, j]
                    t = target[i, j]
                    w = one + (pos_weight[j] - one) * t
                    e = exp_nonpos(-abs(x))
                    buf[j] = _bce_loss(x, t, w, e)
                    if grad:
                        dlogits[i, j] = s * _bce_grad(x, t, w, e)
                    if keep:
                        kept[i, j] = t
                acc = 0.0
                for j in range(d):
                    acc += buf[j]
                losses[i] = acc


@kernel
def bce_logits_forward(losses, logits, target, pos_weight):
    # no gradient, no copy: logits stands in for dlogits and target for kept, never written
    _bce_rows(logits, losses, target, logits, target, pos_weight, typed(logits, 1.0), False, False)


@jit_helper
def _bce_logits_backward(dlogits, logits, target, pos_weight, scale):
    one = typed(logits, 1.0)
    s = typed(logits, scale)
    for i in prange(logits.shape[0]):
        for j in range(logits.shape[1]):
            x = logits[i, j]
            t = target[i, j]
            dlogits[i, j] = s * _bce_grad(x, t, one + (pos_weight[j] - one) * t, exp_nonpos(-abs(x)))


@kernel
def bce_logits_backward(dlogits, logits, target, pos_weight, scale):
    if same_data(dlogits, logits):  # in place: one array for both (see _config.same_data)
        _bce_logits_backward(dlogits, dlogits, target, pos_weight, scale)
    elif same_data(dlogits, target):
        _bce_logits_backward(dlogits, logits, dlogits, pos_weight, scale)
    else:
        _bce_logits_backward(dlogits, logits, target, pos_weight, scale)


@kernel
def bce_logits_forward_backward(dlogits, losses, kept, logits, target, pos_weight, scale):
    s = typed(logits, scale)
    if same_data(kept, target):  # nothing to copy
        _bce_rows(dlogits, losses, kept, logits, target, pos_weight, s, True, False)
    else:
        _bce_rows(dlogits, losses, kept, logits, target, pos_weight, s, True, True)
