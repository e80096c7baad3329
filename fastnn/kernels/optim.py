"""Optimizer update kernels: SGD (plain, momentum, Nesterov), Adam and AdamW.

Each kernel makes one fused pass over one parameter and updates it and its
state in place: no temporaries. Arrays are flat 1-D views of ``n`` elements
(``fastnn.optim`` passes ``p.reshape(-1)``), all of the parameter's dtype.
``p``, ``buf``, ``m``, ``v`` are read and overwritten; ``g`` (the gradient)
is only read. Scalars that depend on the step count (Adam's bias
corrections) are computed by the caller in Python.

The formulas are PyTorch's (``torch.optim.SGD`` and ``torch.optim.Adam``,
single-tensor path, ``maximize=False``, ``amsgrad=False``, ``dampening=0``);
``wd`` is the weight decay.
"""

import numpy as np
from numba import prange

from .._config import kernel, typed


@kernel
def sgd_update(p, g, lr, weight_decay):
    """p = p - lr * (g + wd * p)."""
    lr_ = typed(p, lr)
    wd = typed(p, weight_decay)
    for i in prange(p.shape[0]):
        pi = p[i]
        p[i] = pi - lr_ * (g[i] + wd * pi)


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
    for i in prange(p.shape[0]):
        pi = p[i]
        d = g[i] + wd * pi
        b = mu * buf[i] + d
        buf[i] = b
        if nesterov:
            p[i] = pi - lr_ * (d + mu * b)
        else:
            p[i] = pi - lr_ * b


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
    for i in prange(p.shape[0]):
        pi = p[i]
        d = g[i] + wd * pi
        mi = m[i]
        mi = mi + b1c * (d - mi)
        vi = b2 * v[i] + b2c * d * d
        m[i] = mi
        v[i] = vi
        p[i] = scale * pi - ss * (mi / (np.sqrt(vi) / bc2 + eps_))
