"""Optimizer update kernels: SGD (plain, momentum, Nesterov), Adam and AdamW.

Each kernel makes one fused pass over the parameters and updates them and
their state in place: no temporaries. ``sgd_update``, ``sgd_momentum_update``
and ``adam_update`` update one parameter, given as flat 1-D views of ``n``
elements, all of the parameter's dtype. ``p``, ``buf``, ``m``, ``v`` are read
and overwritten; ``g`` (the gradient) is only read. Scalars that depend on
the step count (Adam's bias corrections) are computed by the caller in
Python.

``multi_sgd_update`` and ``multi_adam_update`` update many parameters of one
dtype in one call (multi-tensor apply, as PyTorch's foreach/fused optimizers
and Apex's ``multi_tensor_apply``): tuples of flat arrays, a per-group table
of hyperparameters (``hyper[group_of[t]]`` for tensor ``t``, so parameter
groups can differ), and a table of chunks ``(tensor, start, stop)`` of about
equal size (``chunk_table``) that the parallel build shares among threads.

Numerics: values below the smallest normal number of the dtype
(1.1754944e-38 in float32, 2.2250738585072014e-308 in float64) are flushed
to zero. Adam's moments of a unit whose gradient stays zero decay by
``beta1`` a step into that subnormal range, where x86 arithmetic takes a
microcode assist about 100x slower than normal. On x86-64 every kernel here
runs its loops with flush-to-zero and denormals-are-zero set in the MXCSR of
the thread that runs them (``fastnn.kernels._fpenv``; each chunk of a
parallel kernel sets and restores it on its own thread), so subnormal inputs
read as zero and subnormal results, intermediate ones included, are stored
as zero; the caller's floating-point mode is restored afterwards. Measured
on real state (the seed's first layer after one Fashion-MNIST epoch, 4% of
the first moments subnormal): an explicit compare-and-select flush of the
loaded and stored state still took 1.4x the time on random state (subnormal
intermediates such as ``(1 - beta1) * m`` remain) and cost 15-25% on normal
values; the MXCSR mode costs nothing per element and ran within 1.15x. On
other architectures (``FLUSHES_SUBNORMALS`` False) the kernels keep IEEE
subnormals. NaN and infinities pass through unchanged. The NumPy references
flush explicitly (state and gradients on load, state on store), which agrees
with this up to values below the smallest normal.

The formulas are PyTorch's (``torch.optim.SGD`` and ``torch.optim.Adam``,
single-tensor path, ``maximize=False``, ``amsgrad=False``, ``dampening=0``);
``wd`` is the weight decay.
"""

import numpy as np
from numba import prange

from .._config import jit_helper, kernel, typed
from ._fpenv import FLUSHES_SUBNORMALS, ftz_begin, ftz_end

# Columns of the per-group hyperparameter tables of the multi-tensor kernels.
SGD_HYPER = ("lr", "momentum", "weight_decay", "nesterov")
ADAM_HYPER = ("step_size", "beta1", "beta2", "eps", "bias_correction2_sqrt",
              "weight_decay", "decay_scale")


# ------------------------------------------------------------ element loops


@jit_helper
def _sgd_loop(p, g, lr, weight_decay):
    for i in range(p.shape[0]):
        pi = p[i]
        p[i] = pi - lr * (g[i] + weight_decay * pi)


@jit_helper
def _sgd_momentum_loop(p, buf, g, lr, momentum, weight_decay, nesterov):
    if nesterov:
        for i in range(p.shape[0]):
            pi = p[i]
            d = g[i] + weight_decay * pi
            b = momentum * buf[i] + d
            buf[i] = b
            p[i] = pi - lr * (d + momentum * b)
    else:
        for i in range(p.shape[0]):
            pi = p[i]
            d = g[i] + weight_decay * pi
            b = momentum * buf[i] + d
            buf[i] = b
            p[i] = pi - lr * b


@jit_helper
def _adam_loop(p, m, v, g, step_size, one_minus_beta1, beta2, one_minus_beta2, eps,
               bias_correction2_sqrt, weight_decay, decay_scale):
    for i in range(p.shape[0]):
        pi = p[i]
        d = g[i] + weight_decay * pi
        mi = m[i]
        mi = mi + one_minus_beta1 * (d - mi)
        vi = beta2 * v[i] + one_minus_beta2 * d * d
        m[i] = mi
        v[i] = vi
        p[i] = decay_scale * pi - step_size * (mi / (np.sqrt(vi) / bias_correction2_sqrt + eps))


# ------------------------------------------------------- one parameter a call

# Elements per prange iteration of the one-parameter kernels: long enough
# inner loops to vectorise, enough blocks to share among threads.
_BLOCK = 4096


@kernel
def sgd_update(p, g, lr, weight_decay):
    """p = p - lr * (g + wd * p)."""
    lr_ = typed(p, lr)
    wd = typed(p, weight_decay)
    n = p.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        s = slice(b * _BLOCK, min(n, (b + 1) * _BLOCK))
        mode = ftz_begin()
        _sgd_loop(p[s], g[s], lr_, wd)
        ftz_end(mode)


@kernel
def sgd_momentum_update(p, buf, g, lr, momentum, weight_decay, nesterov):
    """Heavy-ball / Nesterov momentum, with ``buf`` starting at zero::

        d   = g + wd * p
        buf = momentum * buf + d          (the first step gives buf = d, as PyTorch)
        p   = p - lr * (d + momentum * buf)   if nesterov
        p   = p - lr * buf                    otherwise
    """
    lr_ = typed(p, lr)
    mu = typed(p, momentum)
    wd = typed(p, weight_decay)
    n = p.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        s = slice(b * _BLOCK, min(n, (b + 1) * _BLOCK))
        mode = ftz_begin()
        _sgd_momentum_loop(p[s], buf[s], g[s], lr_, mu, wd, nesterov)
        ftz_end(mode)


@kernel
def adam_update(p, m, v, g, step_size, beta1, beta2, eps, bias_correction2_sqrt,
                weight_decay, decay_scale):
    """Adam (coupled L2) and AdamW (decoupled decay) in one pass::

        d = g + weight_decay * p        (Adam's L2; weight_decay = 0 for AdamW)
        p = decay_scale * p             (AdamW: decay_scale = 1 - lr * wd; Adam: 1)
        m = m + (1 - beta1) * (d - m)   (= beta1 * m + (1 - beta1) * d, PyTorch's lerp)
        v = beta2 * v + (1 - beta2) * d * d
        p = p - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)

    with, at step t (from 1), ``step_size = lr / (1 - beta1**t)`` and
    ``bias_correction2_sqrt = sqrt(1 - beta2**t)``.
    """
    ss = typed(p, step_size)
    b1c = typed(p, 1.0 - beta1)
    b2 = typed(p, beta2)
    b2c = typed(p, 1.0 - beta2)
    eps_ = typed(p, eps)
    bc2 = typed(p, bias_correction2_sqrt)
    wd = typed(p, weight_decay)
    scale = typed(p, decay_scale)
    n = p.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        s = slice(b * _BLOCK, min(n, (b + 1) * _BLOCK))
        mode = ftz_begin()
        _adam_loop(p[s], m[s], v[s], g[s], ss, b1c, b2, b2c, eps_, bc2, wd, scale)
        ftz_end(mode)


# ------------------------------------------------------ all parameters a call


def chunk_table(sizes, chunk: int = _BLOCK) -> np.ndarray:
    """The ``(tensor, start, stop)`` rows (int64) that split tensors of the
    given sizes into chunks of at most ``chunk`` elements, in order."""
    rows = [(t, lo, min(n, lo + chunk)) for t, n in enumerate(sizes) for lo in range(0, n, chunk)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


@kernel
def multi_sgd_update(params, bufs, grads, group_of, hyper, chunks):
    """``sgd_update`` / ``sgd_momentum_update`` over every chunk of
    ``chunks``: tensor ``t`` uses the row ``hyper[group_of[t]]`` =
    (lr, momentum, weight_decay, nesterov as 0/1). With momentum 0 the
    tensor's ``bufs[t]`` is not touched (it may be empty)."""
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        s = slice(chunks[c, 1], chunks[c, 2])
        p = params[t]
        h = group_of[t]
        lr = typed(p, hyper[h, 0])
        mu = typed(p, hyper[h, 1])
        wd = typed(p, hyper[h, 2])
        mode = ftz_begin()
        if hyper[h, 1] == 0.0:
            _sgd_loop(p[s], grads[t][s], lr, wd)
        else:
            _sgd_momentum_loop(p[s], bufs[t][s], grads[t][s], lr, mu, wd, hyper[h, 3] != 0.0)
        ftz_end(mode)


@kernel
def multi_adam_update(params, exp_avgs, exp_avg_sqs, grads, group_of, hyper, chunks):
    """``adam_update`` over every chunk of ``chunks``: tensor ``t`` uses the
    row ``hyper[group_of[t]]`` = (step_size, beta1, beta2, eps,
    bias_correction2_sqrt, weight_decay, decay_scale)."""
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        s = slice(chunks[c, 1], chunks[c, 2])
        p = params[t]
        h = group_of[t]
        mode = ftz_begin()
        _adam_loop(p[s], exp_avgs[t][s], exp_avg_sqs[t][s], grads[t][s],
                   typed(p, hyper[h, 0]), typed(p, 1.0 - hyper[h, 1]), typed(p, hyper[h, 2]),
                   typed(p, 1.0 - hyper[h, 2]), typed(p, hyper[h, 3]), typed(p, hyper[h, 4]),
                   typed(p, hyper[h, 5]), typed(p, hyper[h, 6]))
        ftz_end(mode)
