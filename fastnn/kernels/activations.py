"""Activation kernels: ReLU, LeakyReLU, Sigmoid, Tanh, GELU (tanh form), SiLU.

All arrays are 1-D and C-contiguous here (``functional`` passes flat views),
``n`` elements, float32 or float64; math stays in the input's dtype.
Backward kernels overwrite ``dx``. What each backward needs from the forward:
ReLU, LeakyReLU, GELU, SiLU take the input ``x``; Sigmoid and Tanh take the
output ``y`` (their derivatives are cheapest in terms of it).

The scalar functions (``<act>_fn``, ``<act>_grad``) are shared with the fused
``linear_act`` kernels, so both compute the same activations.

GELU's and SiLU's kernels run with flush-to-zero and denormals-are-zero
(``kernels._fpenv``, set and restored around each block of elements on the
thread that runs it): subnormal inputs read as zero and
subnormal results are stored as zero. Their arithmetic on subnormal operands
(a saturated unit's tiny sigmoid times a small gradient, or a gradient that
is itself subnormal) took x86's slow path: SiLU's backward on the state of a
network trained on unscaled 0-255 pixels ran 2.8x its time on random data
(docs/design.md, "Subnormal floats in the activations"). The other
activations measured no slower on such values and keep IEEE subnormals.
"""

import numba
import numpy as np
from numba import prange
from numba.core import types as nbtypes
from numba.extending import overload

from .._config import PARALLEL_BUILD, jit_helper, jit_loop, kernel, same_data, typed
from ._fpenv import ftz_begin, ftz_end
from ._math import exp_nonpos, tanh_value

GELU_C = np.sqrt(2.0 / np.pi)
GELU_A = 0.044715
# tanh(sqrt(2/pi) * (x + 0.044715 x^3)) is exactly +-1 in float64 beyond
# |x| = 30; clipping there keeps x^3 from overflowing float32 (near 7e12)
# and the derivative from computing inf * 0.
GELU_CLIP = 30.0

# Activation codes for the fused kernels.
IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, GELU, SILU = range(7)
CODES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "sigmoid": SIGMOID,
         "tanh": TANH, "gelu": GELU, "silu": SILU}


@jit_helper
def sigmoid_value(v):
    # exp of a non-positive number only: no overflow for any finite v.
    e = exp_nonpos(-np.abs(v))
    one = typed(v, 1.0)
    return one / (one + e) if v >= typed(v, 0.0) else e / (one + e)


@jit_helper
def gelu_tanh(v):
    """(clipped v, tanh(sqrt(2/pi) (v + 0.044715 v^3)))."""
    lim = typed(v, GELU_CLIP)
    vc = min(max(v, -lim), lim)
    return vc, tanh_value(typed(v, GELU_C) * (vc + typed(v, GELU_A) * vc * vc * vc))


@jit_helper
def gelu_sigmoid(v):
    """(clipped v, s, s (1 - s)) with s = 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)),
    u = sqrt(2/pi) (v + 0.044715 v^3): one exp of a non-positive number and
    one division, where float64's tanh takes an exp and two divisions; no
    cancellation in 1 + tanh(u) for negative v."""
    lim = typed(v, GELU_CLIP)
    vc = min(max(v, -lim), lim)
    u = typed(v, GELU_C) * (vc + typed(v, GELU_A) * vc * vc * vc)
    e = exp_nonpos(typed(v, -2.0) * np.abs(u))
    r = typed(v, 1.0) / (typed(v, 1.0) + e)
    # s = r for u >= 0, e * r below: r * max(e, 1) = r exactly (e <= 1). A
    # conditional expression here made numba's SSA pass warn once its loop
    # was inlined twice (the in-place branch of the GELU kernels).
    return vc, r * max(e, typed(v, u >= typed(v, 0.0))), e * r * r


def gelu_value(v):
    """GELU's tanh form, 0.5 v (1 + tanh(u)), u = sqrt(2/pi) (v + 0.044715 v^3)."""
    u = GELU_C * (v + GELU_A * v ** 3)
    return 0.5 * v * (1.0 + np.tanh(u))


def gelu_grad(v):
    """d gelu_value / dv."""
    u = GELU_C * (v + GELU_A * v ** 3)
    t = np.tanh(u)
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * v * v)


# float64 through the sigmoid form (forward 1.92 -> 1.42 ms, backward 2.04 ->
# 1.67 at 4M elements from memory, 2 threads); float32 keeps the tanh form,
# which ran faster there (0.47 against 0.62 ms, 0.61 against 0.70).
@overload(gelu_value, inline="always")
def _gelu_value_overload(v):
    if v == nbtypes.float64:
        def gelu64(v):
            _, s, _ = gelu_sigmoid(v)
            return v * s

        return gelu64

    def gelu32(v):
        _, t = gelu_tanh(v)
        return typed(v, 0.5) * v * (typed(v, 1.0) + t)

    return gelu32


@overload(gelu_grad, inline="always")
def _gelu_grad_overload(v):
    if v == nbtypes.float64:
        def gelu_grad64(v):
            vc, s, s1s = gelu_sigmoid(v)
            # 0.5 (1 + t) = s, 0.5 (1 - t^2) = 2 s (1 - s)
            return s + 2.0 * GELU_C * vc * s1s * (1.0 + 3.0 * GELU_A * vc * vc)

        return gelu_grad64

    def gelu_grad32(v):
        vc, t = gelu_tanh(v)
        half = typed(v, 0.5)
        one = typed(v, 1.0)
        return half * (one + t) + half * vc * (one - t * t) * typed(v, GELU_C) * (
            one + typed(v, 3.0 * GELU_A) * vc * vc)

    return gelu_grad32


# Scalar activations and their derivatives, all as f(v, alpha) (alpha is
# LeakyReLU's slope, typed like v, unused by the others). The fused kernels
# take them as first-class functions: numba compiles one loop per function,
# which vectorises, where a loop branching on an activation code did not
# (4-6x slower, measured).


@jit_helper
def identity_fn(v, alpha):
    return v


@jit_helper
def identity_grad(v, alpha):
    return typed(v, 1.0)


@jit_helper
def relu_fn(v, alpha):
    zero = typed(v, 0.0)
    return zero if v <= zero else v  # NaN propagates


@jit_helper
def relu_grad(v, alpha):
    return typed(v, 1.0) if v > typed(v, 0.0) else typed(v, 0.0)


@jit_helper
def leaky_relu_fn(v, alpha):
    return v if v > typed(v, 0.0) else alpha * v


@jit_helper
def leaky_relu_grad(v, alpha):
    return typed(v, 1.0) if v > typed(v, 0.0) else alpha


@jit_helper
def sigmoid_fn(v, alpha):
    return sigmoid_value(v)


@jit_helper
def sigmoid_grad(v, alpha):
    s = sigmoid_value(v)
    return s * (typed(v, 1.0) - s)


@jit_helper
def tanh_fn(v, alpha):
    return tanh_value(v)


@jit_helper
def tanh_grad(v, alpha):
    t = tanh_value(v)
    return typed(v, 1.0) - t * t


@jit_helper
def gelu_fn(v, alpha):
    return gelu_value(v)


@jit_helper
def gelu_grad_fn(v, alpha):
    return gelu_grad(v)


@jit_helper
def silu_fn(v, alpha):
    return v * sigmoid_value(v)


@jit_helper
def silu_grad(v, alpha):
    s = sigmoid_value(v)
    one = typed(v, 1.0)
    return s * (one + v * (one - s))


# Serial cost per element of each kernel, (float32, float64), in units of
# 0.25 ns (measured one thread, 1024x1024, benchmarks/vs_torch.py's machine):
# ``functional`` passes ``work = size * cost``, so every kernel goes
# parallel at about the same serial time (PARALLEL_MIN_WORK units, ~130 us,
# against a ~50 us launch) instead of at the same element count.
COST = {
    "relu_forward": (0.4, 1.5), "relu_backward": (0.6, 2.5),
    "leaky_relu_forward": (0.4, 1.0), "leaky_relu_backward": (0.6, 2.2),
    "sigmoid_forward": (1.2, 3.1), "sigmoid_backward": (0.6, 2.0),
    "tanh_forward": (1.0, 4.8), "tanh_backward": (0.6, 1.9),
    # float64 GELU scaled by its sigmoid form's measured speed-up (0.89 -> 0.65,
    # 0.95 -> 0.76 ns/element, one thread, old and new code alternating)
    "gelu_forward": (1.6, 4.8), "gelu_backward": (1.9, 5.5),
    "silu_forward": (1.2, 3.2), "silu_backward": (1.4, 3.7),
}


# Each kernel's loop is a helper that the kernel calls with the output
# array passed for the input it replaces when the two are the same memory
# (``_config.same_data``): ``F.relu(x, out=x)``, or a backward with
# ``out=dy``, then runs vectorised too.


@jit_helper
def _relu_forward(y, x):
    zero = typed(x, 0.0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = zero if v <= zero else v  # NaN propagates (as np.maximum)


@kernel
def relu_forward(y, x):
    """y = max(x, 0)."""
    if same_data(y, x):
        _relu_forward(y, y)
    else:
        _relu_forward(y, x)


@jit_helper
def _relu_backward(dx, dy, x):
    zero = typed(x, 0.0)
    for i in prange(x.shape[0]):
        dx[i] = dy[i] if x[i] > zero else zero


@kernel
def relu_backward(dx, dy, x):
    """dx = dy * (x > 0)."""
    if same_data(dx, dy):
        _relu_backward(dx, dx, x)
    elif same_data(dx, x):
        _relu_backward(dx, dy, dx)
    else:
        _relu_backward(dx, dy, x)


@jit_helper
def _leaky_relu_forward(y, x, alpha):
    zero = typed(x, 0.0)
    a = typed(x, alpha)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if v > zero else a * v


@kernel
def leaky_relu_forward(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    if same_data(y, x):
        _leaky_relu_forward(y, y, alpha)
    else:
        _leaky_relu_forward(y, x, alpha)


@jit_helper
def _leaky_relu_backward(dx, dy, x, alpha):
    zero = typed(x, 0.0)
    a = typed(x, alpha)
    for i in prange(x.shape[0]):
        g = dy[i]
        dx[i] = g if x[i] > zero else a * g


@kernel
def leaky_relu_backward(dx, dy, x, alpha):
    """dx = dy * (1 if x > 0 else alpha)."""
    if same_data(dx, dy):
        _leaky_relu_backward(dx, dx, x, alpha)
    elif same_data(dx, x):
        _leaky_relu_backward(dx, dy, dx, alpha)
    else:
        _leaky_relu_backward(dx, dy, x, alpha)


@jit_helper
def _sigmoid_forward(y, x):
    for i in prange(x.shape[0]):
        y[i] = sigmoid_value(x[i])


@kernel
def sigmoid_forward(y, x):
    """y = 1 / (1 + exp(-x)), overflow-free for any finite x."""
    if same_data(y, x):
        _sigmoid_forward(y, y)
    else:
        _sigmoid_forward(y, x)


@jit_helper
def _sigmoid_backward(dx, dy, y):
    one = typed(y, 1.0)
    for i in prange(y.shape[0]):
        s = y[i]
        dx[i] = dy[i] * s * (one - s)


@kernel
def sigmoid_backward(dx, dy, y):
    """dx = dy * y * (1 - y), from the forward's output y."""
    if same_data(dx, dy):
        _sigmoid_backward(dx, dx, y)
    elif same_data(dx, y):
        _sigmoid_backward(dx, dy, dx)
    else:
        _sigmoid_backward(dx, dy, y)


@jit_helper
def _tanh_forward(y, x):
    for i in prange(x.shape[0]):
        y[i] = tanh_value(x[i])


@kernel
def tanh_forward(y, x):
    """y = tanh(x)."""
    if same_data(y, x):
        _tanh_forward(y, y)
    else:
        _tanh_forward(y, x)


@jit_helper
def _tanh_backward(dx, dy, y):
    one = typed(y, 1.0)
    for i in prange(y.shape[0]):
        t = y[i]
        dx[i] = dy[i] * (one - t * t)


@kernel
def tanh_backward(dx, dy, y):
    """dx = dy * (1 - y^2), from the forward's output y."""
    if same_data(dx, dy):
        _tanh_backward(dx, dx, y)
    elif same_data(dx, y):
        _tanh_backward(dx, dy, dx)
    else:
        _tanh_backward(dx, dy, y)


# Flush-to-zero blocks (one MXCSR save and restore, one call of the block
# function, about 0.05 us each: 3.5% of GELU's float32 backward at 4096
# elements, 8% at 2048). The serial build makes one block of the whole array;
# the parallel build about four for each of the pool's threads, of
# FLUSH_BLOCK_MIN to FLUSH_BLOCK elements. (The pool's size is a constant
# here: numba.get_num_threads() would keep the kernels out of the cache.)
FLUSH_BLOCK = 16384
FLUSH_BLOCK_MIN = 2048
_FLUSH_BLOCKS = 4 * numba.config.NUMBA_NUM_THREADS


@jit_helper
def flush_block_size(n, parallel):
    if not parallel:
        return max(n, 1)
    return min(FLUSH_BLOCK, max(FLUSH_BLOCK_MIN, n // _FLUSH_BLOCKS))


@jit_helper
def flush_rows(n, h, parallel):
    """Rows of ``h`` elements per flush-to-zero block of ``n`` rows (``linear_act``)."""
    return max(1, flush_block_size(n * h, parallel) // max(h, 1))


# GELU's and SiLU's kernels: each element loop (``_<act>_<dir>_loop``) is
# inlined into a block function (``_<act>_<dir>_block``, ``jit_loop``: compiled
# on its own) that picks the in-place variant of the loop; the kernel runs
# the blocks with flush-to-zero.


@jit_helper
def _gelu_forward_loop(y, x):
    for i in range(x.shape[0]):
        y[i] = gelu_fn(x[i], x[i])


@jit_loop
def _gelu_forward_block(y, x):
    if same_data(y, x):
        _gelu_forward_loop(y, y)
    else:
        _gelu_forward_loop(y, x)


@kernel
def gelu_forward(y, x):
    """y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    n = x.shape[0]
    size = flush_block_size(n, PARALLEL_BUILD)
    for b in prange((n + size - 1) // size):
        lo, hi = b * size, min(n, (b + 1) * size)
        mode = ftz_begin()
        _gelu_forward_block(y[lo:hi], x[lo:hi])
        ftz_end(mode)


@jit_helper
def _gelu_backward_loop(dx, dy, x):
    for i in range(x.shape[0]):
        dx[i] = dy[i] * gelu_grad(x[i])


@jit_loop
def _gelu_backward_block(dx, dy, x):
    if same_data(dx, dy):
        _gelu_backward_loop(dx, dx, x)
    elif same_data(dx, x):
        _gelu_backward_loop(dx, dy, dx)
    else:
        _gelu_backward_loop(dx, dy, x)


@kernel
def gelu_backward(dx, dy, x):
    """dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)),
    t = tanh(sqrt(2/pi) (x + 0.044715 x^3)); x clipped to +-30 (see GELU_CLIP)."""
    n = x.shape[0]
    size = flush_block_size(n, PARALLEL_BUILD)
    for b in prange((n + size - 1) // size):
        lo, hi = b * size, min(n, (b + 1) * size)
        mode = ftz_begin()
        _gelu_backward_block(dx[lo:hi], dy[lo:hi], x[lo:hi])
        ftz_end(mode)


@jit_helper
def _silu_forward_loop(y, x):
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = v * sigmoid_value(v)


@jit_loop
def _silu_forward_block(y, x):
    if same_data(y, x):
        _silu_forward_loop(y, y)
    else:
        _silu_forward_loop(y, x)


@kernel
def silu_forward(y, x):
    """y = x * sigmoid(x)."""
    n = x.shape[0]
    size = flush_block_size(n, PARALLEL_BUILD)
    for b in prange((n + size - 1) // size):
        lo, hi = b * size, min(n, (b + 1) * size)
        mode = ftz_begin()
        _silu_forward_block(y[lo:hi], x[lo:hi])
        ftz_end(mode)


@jit_helper
def _silu_backward_loop(dx, dy, x):
    one = typed(x, 1.0)
    for i in range(x.shape[0]):
        v = x[i]
        s = sigmoid_value(v)
        dx[i] = dy[i] * s * (one + v * (one - s))


@jit_loop
def _silu_backward_block(dx, dy, x):
    if same_data(dx, dy):
        _silu_backward_loop(dx, dx, x)
    elif same_data(dx, x):
        _silu_backward_loop(dx, dy, dx)
    else:
        _silu_backward_loop(dx, dy, x)


@kernel
def silu_backward(dx, dy, x):
    """dx = dy * s (1 + x (1 - s)), s = sigmoid(x)."""
    n = x.shape[0]
    size = flush_block_size(n, PARALLEL_BUILD)
    for b in prange((n + size - 1) // size):
        lo, hi = b * size, min(n, (b + 1) * size)
        mode = ftz_begin()
        _silu_backward_block(dx[lo:hi], dy[lo:hi], x[lo:hi])
        ftz_end(mode)
