"""NumPy reference for ``fastnn.kernels.linear_act`` (same names, same signatures)."""

import numpy as np

from ..kernels.activations import CODES, IDENTITY, RELU
from . import activations as _activations
from . import dropout as _dropout

_NAMES = {code: name for name, code in CODES.items()}


def _act(v, act, alpha):
    if act == IDENTITY:
        return v.copy()
    name = _NAMES[act]
    out = np.empty_like(v)
    extra = (alpha,) if name == "leaky_relu" else ()
    getattr(_activations, name + "_forward")(out, v, *extra)
    return out


def _act_grad(v, act, alpha):
    """act'(v), through the reference backward with dy = 1."""
    if act == IDENTITY:
        return np.ones_like(v)
    name = _NAMES[act]
    saved = _act(v, act, alpha) if name in ("sigmoid", "tanh") else v
    out = np.empty_like(v)
    extra = (alpha,) if name == "leaky_relu" else ()
    getattr(_activations, name + "_backward")(out, np.ones_like(v), saved, *extra)
    return out


def bias_act_dropout_forward(y, z, mask, b, act, alpha, seed, step, threshold, scale, row0=0):
    pre = y + b
    if z.size:
        z[...] = pre
    out = _act(pre, act, alpha)
    if mask.size:
        _dropout.dropout_forward(out.reshape(-1), mask.reshape(-1), out.reshape(-1), seed, step, threshold, scale,
                                  row0 * y.shape[1])
    y[...] = out


def bias_act_dropout_backward(dz, db, dy, y, z, mask, act, alpha, scale):
    if act == RELU:
        dz[...] = dy * (y > 0) * dy.dtype.type(scale)
    else:
        dz[...] = dy * _act_grad(z, act, alpha)
        if mask.size:
            dz *= mask * dy.dtype.type(scale)
    db[...] = dz.sum(axis=0)


def linear_act_forward(y, z, mask, x, W, b, act, alpha, seed, step, threshold, scale, row0=0):
    y[...] = x @ W
    bias_act_dropout_forward(y, z, mask, b, act, alpha, seed, step, threshold, scale, row0)


def linear_act_backward(dx, dW, db, dz, dy, x, W, y, z, mask, act, alpha, scale):
    bias_act_dropout_backward(dz, db, dy, y, z, mask, act, alpha, scale)
    dW[...] = x.T @ dz
    if dx is not None:
        dx[...] = dz @ W.T
