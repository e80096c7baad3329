"""NumPy reference for ``fastnn.kernels.activations`` (same names, same signatures)."""

import numpy as np

from ..kernels.activations import GELU_A, GELU_C, GELU_CLIP


def relu_forward(y, x):
    y[...] = np.maximum(x, 0)


def relu_backward(dx, dy, x):
    dx[...] = dy * (x > 0)


def leaky_relu_forward(y, x, alpha):
    y[...] = np.where(x > 0, x, x.dtype.type(alpha) * x)


def leaky_relu_backward(dx, dy, x, alpha):
    dx[...] = dy * np.where(x > 0, x.dtype.type(1), x.dtype.type(alpha))


def _sigmoid(x):
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_forward(y, x):
    y[...] = _sigmoid(x)


def sigmoid_backward(dx, dy, y):
    dx[...] = dy * y * (1 - y)


def tanh_forward(y, x):
    y[...] = np.tanh(x)


def tanh_backward(dx, dy, y):
    dx[...] = dy * (1 - y * y)


def _gelu_inner(x):
    xc = np.clip(x, -GELU_CLIP, GELU_CLIP)
    return xc, np.tanh(x.dtype.type(GELU_C) * (xc + x.dtype.type(GELU_A) * xc**3))


def gelu_forward(y, x):
    _, t = _gelu_inner(x)
    y[...] = 0.5 * x * (1 + t)


def gelu_backward(dx, dy, x):
    xc, t = _gelu_inner(x)
    c, a = x.dtype.type(GELU_C), x.dtype.type(GELU_A)
    dx[...] = dy * (0.5 * (1 + t) + 0.5 * xc * (1 - t * t) * c * (1 + 3 * a * xc * xc))


def silu_forward(y, x):
    y[...] = x * _sigmoid(x)


def silu_backward(dx, dy, x):
    s = _sigmoid(x)
    dx[...] = dy * s * (1 + x * (1 - s))
