"""NumPy references of ``fastnn.kernels.optim``: same names, signatures and
in-place semantics (``p``, ``buf``, ``m``, ``v`` overwritten; ``g`` read).
Scalars are cast to the parameter's dtype first, as the kernels do."""

import numpy as np


def sgd_update(p, g, lr, weight_decay):
    """p = p - lr * (g + wd * p)."""
    t = p.dtype.type
    p -= t(lr) * (g + t(weight_decay) * p)


def sgd_momentum_update(p, buf, g, lr, momentum, weight_decay, nesterov):
    """d = g + wd * p; buf = momentum * buf + d;
    p -= lr * (d + momentum * buf) if nesterov else lr * buf."""
    t = p.dtype.type
    mu = t(momentum)
    d = g + t(weight_decay) * p
    buf *= mu
    buf += d
    p -= t(lr) * (d + mu * buf if nesterov else buf)


def adam_update(p, m, v, g, step_size, beta1, beta2, eps, bias_correction2_sqrt,
                weight_decay, decay_scale):
    """d = g + weight_decay * p; p = decay_scale * p;
    m += (1 - beta1) * (d - m); v = beta2 * v + (1 - beta2) * d^2;
    p -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)."""
    t = p.dtype.type
    d = g + t(weight_decay) * p
    p *= t(decay_scale)
    m += t(1.0 - beta1) * (d - m)
    v *= t(beta2)
    v += t(1.0 - beta2) * d * d
    p -= t(step_size) * (m / (np.sqrt(v) / t(bias_correction2_sqrt) + t(eps)))
