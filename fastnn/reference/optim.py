"""NumPy references of ``fastnn.kernels.optim``: same names, signatures and
in-place semantics (``p``, ``buf``, ``m``, ``v`` overwritten; ``g`` read).
Scalars are cast to the parameter's dtype first, as the kernels do.
Gradient and state values below the dtype's smallest normal are flushed to
zero on load and the new state on store: the kernels' flush-to-zero mode
(see ``fastnn.kernels.optim``) up to differences below the smallest normal."""

import numpy as np


def _flushed(a):
    """A copy of ``a`` with values below the smallest normal set to zero."""
    return np.where(np.abs(a) < np.finfo(a.dtype).tiny, a.dtype.type(0), a)


def _store(dst, value):
    dst[...] = _flushed(np.asarray(value, dtype=dst.dtype))


def sgd_update(p, g, lr, weight_decay):
    """p = p - lr * (g + wd * p)."""
    t = p.dtype.type
    p -= t(lr) * (_flushed(g) + t(weight_decay) * p)


def sgd_momentum_update(p, buf, g, lr, momentum, weight_decay, nesterov):
    """d = g + wd * p; buf = momentum * buf + d;
    p -= lr * (d + momentum * buf) if nesterov else lr * buf."""
    t = p.dtype.type
    mu = t(momentum)
    d = _flushed(g) + t(weight_decay) * p
    _store(buf, mu * _flushed(buf) + d)
    p -= t(lr) * (d + mu * buf if nesterov else buf)


def adam_update(p, m, v, g, step_size, beta1, beta2, eps, bias_correction2_sqrt,
                weight_decay, decay_scale):
    """d = g + weight_decay * p; p = decay_scale * p;
    m += (1 - beta1) * (d - m); v = beta2 * v + (1 - beta2) * d^2;
    p -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)."""
    t = p.dtype.type
    d = _flushed(g) + t(weight_decay) * p
    m0 = _flushed(m)
    _store(m, m0 + t(1.0 - beta1) * (d - m0))
    _store(v, t(beta2) * _flushed(v) + t(1.0 - beta2) * d * d)
    p *= t(decay_scale)
    p -= t(step_size) * (m / (np.sqrt(v) / t(bias_correction2_sqrt) + t(eps)))


def multi_sgd_update(params, bufs, grads, group_of, hyper, chunks):
    """``sgd_update`` (momentum 0) or ``sgd_momentum_update`` on each chunk
    ``(t, start, stop)``, with tensor ``t``'s row ``hyper[group_of[t]]`` =
    (lr, momentum, weight_decay, nesterov as 0/1)."""
    for t, lo, hi in np.asarray(chunks).tolist():
        lr, momentum, wd, nesterov = hyper[group_of[t]].tolist()
        if momentum == 0:
            sgd_update(params[t][lo:hi], grads[t][lo:hi], lr, wd)
        else:
            sgd_momentum_update(params[t][lo:hi], bufs[t][lo:hi], grads[t][lo:hi], lr, momentum,
                                wd, nesterov != 0)


def multi_adam_update(params, exp_avgs, exp_avg_sqs, grads, group_of, hyper, chunks):
    """``adam_update`` on each chunk ``(t, start, stop)``, with tensor
    ``t``'s row ``hyper[group_of[t]]`` = (step_size, beta1, beta2, eps,
    bias_correction2_sqrt, weight_decay, decay_scale)."""
    for t, lo, hi in np.asarray(chunks).tolist():
        s = slice(lo, hi)
        adam_update(params[t][s], exp_avgs[t][s], exp_avg_sqs[t][s], grads[t][s],
                    *hyper[group_of[t]].tolist())
