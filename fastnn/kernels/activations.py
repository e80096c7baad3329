"""Activation kernels: ReLU, LeakyReLU, Sigmoid, Tanh, GELU (tanh form), SiLU.

All arrays are 1-D and C-contiguous here (``functional`` passes flat views),
``n`` elements, float32 or float64; math stays in the input's dtype.
Backward kernels overwrite ``dx``. What each backward needs from the forward:
ReLU, LeakyReLU, GELU, SiLU take the input ``x``; Sigmoid and Tanh take the
output ``y`` (their derivatives are cheapest in terms of it).
"""

import numpy as np
from numba import prange

from .._config import jit_helper, kernel, typed

GELU_C = np.sqrt(2.0 / np.pi)
GELU_A = 0.044715
# tanh(sqrt(2/pi) * (x + 0.044715 x^3)) is exactly +-1 in float64 beyond
# |x| = 30; clipping there keeps x^3 from overflowing float32 (near 7e12)
# and the derivative from computing inf * 0.
GELU_CLIP = 30.0


@kernel
def relu_forward(y, x):
    """y = max(x, 0)."""
    zero = typed(x, 0.0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if v > zero else zero


@kernel
def relu_backward(dx, dy, x):
    """dx = dy * (x > 0)."""
    zero = typed(x, 0.0)
    for i in prange(x.shape[0]):
        dx[i] = dy[i] if x[i] > zero else zero


@kernel
def leaky_relu_forward(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    zero = typed(x, 0.0)
    a = typed(x, alpha)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if v > zero else a * v


@kernel
def leaky_relu_backward(dx, dy, x, alpha):
    """dx = dy * (1 if x > 0 else alpha)."""
    zero = typed(x, 0.0)
    a = typed(x, alpha)
    for i in prange(x.shape[0]):
        g = dy[i]
        dx[i] = g if x[i] > zero else a * g


@jit_helper
def _sigmoid(v):
    # exp of a non-positive number only: no overflow for any finite v.
    e = np.exp(-np.abs(v))
    one = typed(v, 1.0)
    return one / (one + e) if v >= typed(v, 0.0) else e / (one + e)


@kernel
def sigmoid_forward(y, x):
    """y = 1 / (1 + exp(-x)), overflow-free for any finite x."""
    for i in prange(x.shape[0]):
        y[i] = _sigmoid(x[i])


@kernel
def sigmoid_backward(dx, dy, y):
    """dx = dy * y * (1 - y), from the forward's output y."""
    one = typed(y, 1.0)
    for i in prange(y.shape[0]):
        s = y[i]
        dx[i] = dy[i] * s * (one - s)


@kernel
def tanh_forward(y, x):
    """y = tanh(x)."""
    for i in prange(x.shape[0]):
        y[i] = np.tanh(x[i])


@kernel
def tanh_backward(dx, dy, y):
    """dx = dy * (1 - y^2), from the forward's output y."""
    one = typed(y, 1.0)
    for i in prange(y.shape[0]):
        t = y[i]
        dx[i] = dy[i] * (one - t * t)


@kernel
def gelu_forward(y, x):
    """y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    c = typed(x, GELU_C)
    a = typed(x, GELU_A)
    lim = typed(x, GELU_CLIP)
    half = typed(x, 0.5)
    one = typed(x, 1.0)
    for i in prange(x.shape[0]):
        v = x[i]
        vc = min(max(v, -lim), lim)
        t = np.tanh(c * (vc + a * vc * vc * vc))
        y[i] = half * v * (one + t)


@kernel
def gelu_backward(dx, dy, x):
    """dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)),
    t = tanh(sqrt(2/pi) (x + 0.044715 x^3))."""
    c = typed(x, GELU_C)
    a = typed(x, GELU_A)
    a3 = typed(x, 3.0 * GELU_A)
    lim = typed(x, GELU_CLIP)
    half = typed(x, 0.5)
    one = typed(x, 1.0)
    for i in prange(x.shape[0]):
        v = min(max(x[i], -lim), lim)
        v2 = v * v
        t = np.tanh(c * (v + a * v2 * v))
        g = half * (one + t) + half * v * (one - t * t) * c * (one + a3 * v2)
        dx[i] = dy[i] * g


@kernel
def silu_forward(y, x):
    """y = x * sigmoid(x)."""
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v * _sigmoid(v)


@kernel
def silu_backward(dx, dy, x):
    """dx = dy * s (1 + x (1 - s)), s = sigmoid(x)."""
    one = typed(x, 1.0)
    for i in prange(x.shape[0]):
        v = x[i]
        s = _sigmoid(v)
        dx[i] = dy[i] * s * (one + v * (one - s))
