"""NumPy reference for ``fastnn.kernels.dropout`` (same names, same signatures)."""

import numpy as np

from ..kernels.dropout import GOLDEN, MIX1, MIX2


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def dropout_forward(y, mask, x, key, threshold, scale):
    idx = np.arange(x.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        h = _mix(np.uint64(key) + idx * GOLDEN) >> np.uint64(40)
    mask[...] = h >= np.uint64(threshold)
    y[...] = x * mask * x.dtype.type(scale)


def dropout_backward(dx, dy, mask, scale):
    dx[...] = dy * mask * dy.dtype.type(scale)
