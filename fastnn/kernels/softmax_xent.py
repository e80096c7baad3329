"""Softmax fused with cross-entropy, numerically stable.

Shapes: ``N`` batch, ``C`` classes. ``logits: (N, C)``, ``probs: (N, C)``,
``losses: (N,)`` per-sample loss, the batch loss is ``losses.mean()``.
Targets are either integer ``labels: (N,)`` in [0, C) (the ``*_labels``
kernels; the caller has checked the range: these kernels index with them)
or ``targets: (N, C)`` one-hot or soft rows that sum to 1.

The loss is ``logsumexp(z) - z[y]``. The seed computes
``-log(softmax(z)[y] + 1e-8)`` instead: that biases every loss by about
1e-8/p and caps it at -log(1e-8) = 18.4 when p underflows; the logsumexp
form is exact and never takes log(0).
Backward: ``dlogits = (probs - onehot(y)) / N`` (overwritten).

Two ways to split the work. ``softmax_xent_forward_*`` writes the
probabilities and ``softmax_xent_backward_*`` reads them (``functional``'s
API, which returns them). ``softmax_xent_loss_*`` keeps only each row's max
and sum of exp(z - max), and ``softmax_xent_grad_*`` recomputes the
probabilities from the logits while it writes the gradient (the module's
path in eval mode): three passes over an (N, C) array instead of four,
the probability write and its re-read traded for a second exp per element.
``softmax_xent_loss_grad_*`` does both at once for a forward that will be
followed by a backward (the module in training mode): each row's exps go
into the gradient's row while it is in cache and are scaled there, so one
exp per element and two passes (read the logits, write the gradient). All
compute the probabilities with the same float operations (equal to a few
ulp: the compiler may order a row's exp-sum differently in each). Each row
kernel that reads the logits asks for the next row's cache lines, half when
it starts on a row and half after the row's max (``_prefetch``), so that
memory works while this row's exps compute.
"""

import numpy as np
from numba import prange

from .._config import is_float64, jit_helper, kernel, same_data, typed
from ._math import exp_nonpos, from_ordered_key, ordered_key
from ._prefetch import prefetch_next


# Serial cost per element of each kernel, (float32, float64), in units of
# 0.25 ns (measured one thread, 1024x1024, benchmarks/vs_torch.py's machine):
# ``functional`` passes ``work = size * cost``, so every kernel goes
# parallel at about the same serial time (PARALLEL_MIN_WORK units, ~130 us,
# against a ~50 us launch) instead of at the same element count.
COST = {
    "softmax_xent_forward_labels": (1.2, 3.2), "softmax_xent_forward_targets": (1.45, 4.0),
    "softmax_xent_backward_labels": (0.3, 0.8), "softmax_xent_backward_targets": (0.5, 1.2),
    "softmax_xent_loss_labels": (1.0, 2.5), "softmax_xent_loss_targets": (1.5, 3.5),
    "softmax_xent_grad_labels": (1.1, 2.6), "softmax_xent_grad_targets": (1.1, 2.9),
    "softmax_xent_loss_grad_labels": (1.25, 3.4), "softmax_xent_loss_grad_targets": (1.8, 4.3),
    "softmax_xent_target_rows": (0.33, 0.4),
}


@jit_helper
def _row_max(z):
    """max(z), reduced over ``ordered_key``s: an integer max reduction
    vectorises with a plain vpmaxs per vector, while a float one vectorised
    only as LLVM's maxnum, whose NaN check sits on the loop's critical path
    (one thread, 1M float32: 41 us against 130 us). A NaN in the row may or
    may not come out as the max (its sign bit decides); either way its
    exp makes the row's sum, loss and gradient NaN."""
    k = ordered_key(z[0])
    for j in range(1, z.shape[0]):
        k = max(k, ordered_key(z[j]))
    return from_ordered_key(k)


@jit_helper
def _row_expsum(z, m):
    """sum(exp(z - m)) in z's dtype (float64 accumulation cost a third more
    in float32; the vector lanes keep each partial sum short)."""
    s = typed(z, 0.0)
    for j in range(z.shape[0]):
        s += exp_nonpos(z[j] - m)
    return s


@jit_helper
def _exp_row_into(d, z, m):
    """d = exp(z - m) for one row; returns the sum, as ``_row_expsum``."""
    s = typed(z, 0.0)
    for j in range(z.shape[0]):
        e = exp_nonpos(z[j] - m)
        d[j] = e
        s += e
    return s


@jit_helper
def _max_then_prefetch(logits, i):
    """max(logits[i]), then the second half of the next row's prefetch (the
    first was asked for when the row started: ``_prefetch``)."""
    m = _row_max(logits[i])
    prefetch_next(logits, i, 1)
    return m


@jit_helper
def _softmax_row(p, logits, i):
    """p = softmax(z) for row z = logits[i]; returns logsumexp(z) as float64.

    Three vectorised passes over a row that stays in L1: max, exp and its
    sum, scale."""
    z = logits[i]
    m = _max_then_prefetch(logits, i)
    s = _exp_row_into(p, z, m)
    inv = typed(p, 1.0 / s)
    for j in range(z.shape[0]):
        p[j] *= inv
    return np.float64(m) + np.log(np.float64(s))


@kernel
def softmax_xent_forward_labels(probs, losses, logits, labels):
    """probs = softmax(logits), losses[i] = logsumexp(logits[i]) - logits[i, labels[i]]."""
    for i in prange(logits.shape[0]):
        prefetch_next(logits, i, 0)
        lse = _softmax_row(probs[i], logits, i)
        losses[i] = lse - logits[i, labels[i]]


@jit_helper
def _softmax_xent_backward_labels(dlogits, probs, labels):
    n, c = probs.shape
    inv_n = typed(probs, 1.0 / n)
    for i in prange(n):
        for j in range(c):
            dlogits[i, j] = probs[i, j] * inv_n
        dlogits[i, labels[i]] -= inv_n


@kernel
def softmax_xent_backward_labels(dlogits, probs, labels):
    """dlogits = (probs - onehot(labels)) / N."""
    if same_data(dlogits, probs):  # in place: one array for both (see _config.same_data)
        _softmax_xent_backward_labels(dlogits, dlogits, labels)
    else:
        _softmax_xent_backward_labels(dlogits, probs, labels)


@kernel
def softmax_xent_forward_targets(probs, losses, logits, targets):
    """probs = softmax(logits), losses[i] = sum_j targets[i, j] (logsumexp(logits[i]) - logits[i, j])."""
    n, c = logits.shape
    for i in prange(n):
        prefetch_next(logits, i, 0)
        prefetch_next(targets, i, 0)
        lse = _softmax_row(probs[i], logits, i)
        prefetch_next(targets, i, 1)
        acc = 0.0
        for j in range(c):
            acc += targets[i, j] * (lse - logits[i, j])
        losses[i] = acc


@jit_helper
def _softmax_xent_backward_targets(dlogits, probs, targets):
    n, c = probs.shape
    inv_n = typed(probs, 1.0 / n)
    for i in prange(n):
        for j in range(c):
            dlogits[i, j] = (probs[i, j] - targets[i, j]) * inv_n


@kernel
def softmax_xent_backward_targets(dlogits, probs, targets):
    """dlogits = (probs - targets) / N."""
    if same_data(dlogits, probs):  # in place: one array for both (see _config.same_data)
        _softmax_xent_backward_targets(dlogits, dlogits, targets)
    elif same_data(dlogits, targets):
        _softmax_xent_backward_targets(dlogits, probs, dlogits)
    else:
        _softmax_xent_backward_targets(dlogits, probs, targets)


@jit_helper
def _keep_row_stats(rowmax, rowsum, logits, i):
    """rowmax[i], rowsum[i] of row z = logits[i]; returns logsumexp(z) as float64."""
    z = logits[i]
    m = _max_then_prefetch(logits, i)
    s = _row_expsum(z, m)
    rowmax[i] = m
    rowsum[i] = s
    return np.float64(m) + np.log(np.float64(s))


@kernel
def softmax_xent_loss_labels(rowmax, rowsum, losses, logits, labels):
    """losses[i] = logsumexp(logits[i]) - logits[i, labels[i]]; rowmax[i] =
    max(logits[i]), rowsum[i] = sum(exp(logits[i] - rowmax[i])) for
    ``softmax_xent_grad_labels``. The probabilities are not written."""
    for i in prange(logits.shape[0]):
        prefetch_next(logits, i, 0)
        losses[i] = _keep_row_stats(rowmax, rowsum, logits, i) - logits[i, labels[i]]


@jit_helper
def _softmax_xent_grad_labels(dlogits, logits, rowmax, rowsum, labels):
    n, c = logits.shape
    inv_n = typed(logits, 1.0 / n)
    for i in prange(n):
        m = rowmax[i]
        inv = typed(logits, 1.0 / rowsum[i])
        for j in range(c):
            dlogits[i, j] = (exp_nonpos(logits[i, j] - m) * inv) * inv_n
        dlogits[i, labels[i]] -= inv_n


@kernel
def softmax_xent_grad_labels(dlogits, logits, rowmax, rowsum, labels):
    """dlogits = (softmax(logits) - onehot(labels)) / N, the softmax
    recomputed from ``softmax_xent_loss_labels``'s rowmax and rowsum."""
    if same_data(dlogits, logits):  # in place: one array for both (see _config.same_data)
        _softmax_xent_grad_labels(dlogits, dlogits, rowmax, rowsum, labels)
    else:
        _softmax_xent_grad_labels(dlogits, logits, rowmax, rowsum, labels)


@kernel
def softmax_xent_loss_targets(rowmax, rowsum, losses, logits, targets):
    """losses[i] = sum_j targets[i, j] (logsumexp(logits[i]) - logits[i, j]);
    rowmax, rowsum as in ``softmax_xent_loss_labels``."""
    n, c = logits.shape
    for i in prange(n):
        prefetch_next(logits, i, 0)
        prefetch_next(targets, i, 0)
        lse = _keep_row_stats(rowmax, rowsum, logits, i)
        prefetch_next(targets, i, 1)
        acc = 0.0
        for j in range(c):
            acc += targets[i, j] * (lse - logits[i, j])
        losses[i] = acc


@jit_helper
def _softmax_xent_grad_targets(dlogits, logits, rowmax, rowsum, targets):
    n, c = logits.shape
    inv_n = typed(logits, 1.0 / n)
    for i in prange(n):
        m = rowmax[i]
        inv = typed(logits, 1.0 / rowsum[i])
        for j in range(c):
            dlogits[i, j] = (exp_nonpos(logits[i, j] - m) * inv - targets[i, j]) * inv_n


@kernel
def softmax_xent_grad_targets(dlogits, logits, rowmax, rowsum, targets):
    """dlogits = (softmax(logits) - targets) / N, the softmax recomputed
    from ``softmax_xent_loss_targets``'s rowmax and rowsum."""
    if same_data(dlogits, logits):  # in place: one array for both (see _config.same_data)
        _softmax_xent_grad_targets(dlogits, dlogits, rowmax, rowsum, targets)
    elif same_data(dlogits, targets):
        _softmax_xent_grad_targets(dlogits, logits, rowmax, rowsum, dlogits)
    else:
        _softmax_xent_grad_targets(dlogits, logits, rowmax, rowsum, targets)


@jit_helper
def _row_stats_and_exps(rowmax, rowsum, d, logits, i):
    """``_keep_row_stats`` that also leaves exp(z - max) in d; returns
    logsumexp(z) as float64 and the row's 1 / sum in z's dtype."""
    z = logits[i]
    m = _max_then_prefetch(logits, i)
    s = _exp_row_into(d, z, m)
    rowmax[i] = m
    rowsum[i] = s
    return np.float64(m) + np.log(np.float64(s)), typed(z, 1.0 / rowsum[i])


@kernel
def softmax_xent_loss_grad_labels(dlogits, rowmax, rowsum, losses, logits, labels):
    """``softmax_xent_loss_labels`` and ``softmax_xent_grad_labels`` in one
    pass: the same rowmax, rowsum, losses and dlogits."""
    n, c = logits.shape
    inv_n = typed(logits, 1.0 / n)
    for i in prange(n):
        prefetch_next(logits, i, 0)
        d = dlogits[i]
        lse, inv = _row_stats_and_exps(rowmax, rowsum, d, logits, i)
        losses[i] = lse - logits[i, labels[i]]
        for j in range(c):
            d[j] = (d[j] * inv) * inv_n
        d[labels[i]] -= inv_n


@jit_helper
def _softmax_xent_loss_grad_targets(dlogits, rowmax, rowsum, losses, kept, logits, targets, keep):
    n, c = logits.shape
    inv_n = typed(logits, 1.0 / n)
    for i in prange(n):
        prefetch_next(logits, i, 0)
        prefetch_next(targets, i, 0)
        d = dlogits[i]
        lse, inv = _row_stats_and_exps(rowmax, rowsum, d, logits, i)
        prefetch_next(targets, i, 1)
        acc = 0.0
        for j in range(c):
            acc += targets[i, j] * (lse - logits[i, j])
        losses[i] = acc
        for j in range(c):
            t = targets[i, j]
            d[j] = (d[j] * inv - t) * inv_n
            if keep:
                kept[i, j] = t


@kernel
def softmax_xent_loss_grad_targets(dlogits, rowmax, rowsum, losses, kept, logits, targets):
    """``softmax_xent_loss_targets`` and ``softmax_xent_grad_targets`` in one
    pass, a copy of the targets written to ``kept`` on the way (the module's
    own, for a later backward; ``kept`` = ``targets``: no copy)."""
    if same_data(kept, targets):  # nothing to copy
        _softmax_xent_loss_grad_targets(dlogits, rowmax, rowsum, losses, kept, logits, targets, False)
    else:
        _softmax_xent_loss_grad_targets(dlogits, rowmax, rowsum, losses, kept, logits, targets, True)


@kernel
def softmax_xent_target_rows(sums, bad, targets):
    """The checks of (N, C) targets before a loss kernel reads them, in one
    pass: sums[i] = row i's sum (float64), bad[i] = how many of its entries
    are NaN, infinite or negative. (Three NumPy passes, each with its own
    temporary, took half of ``SoftmaxCrossEntropy``'s forward + backward.)"""
    n, c = targets.shape
    zero = typed(targets, 0.0)
    top = typed(targets, 1.7976931348623157e308) if is_float64(targets) else typed(targets, 3.4028234663852886e38)
    for i in prange(n):
        acc = 0.0
        nbad = 0
        for j in range(c):
            v = targets[i, j]
            acc += v
            nbad += 0 if zero <= v <= top else 1  # False for NaN
        sums[i] = acc
        bad[i] = nbad
