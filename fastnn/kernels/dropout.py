"""Inverted dropout with counter-based, reproducible masks.

Arrays are 1-D (``functional`` passes flat views) of ``n`` elements;
``mask: (n,) uint8`` is saved by the forward (1 = kept) and reused by the
backward. Element ``i`` is kept when ``hash(seed, step, i) >> 40``, a
uniform 24-bit integer, is at least ``threshold = round(p * 2**24)``.
The hash is splitmix64's finaliser: the same mask for the same
(seed, step) whatever the thread count, in numba and in NumPy alike
(numba's own RNG is per thread under ``parallel=True``, so not reproducible).
Kept elements are scaled by ``scale = 1 / (1 - p)``.
"""

import numpy as np
from numba import prange

from .._config import jit_helper, kernel, typed

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
S30 = np.uint64(30)
S27 = np.uint64(27)
S31 = np.uint64(31)
S40 = np.uint64(40)
UNIFORM_BITS = 24


def dropout_threshold(p: float) -> int:
    """The 24-bit integer below which an element is dropped."""
    return int(round(p * (1 << UNIFORM_BITS)))


def dropout_key(seed: int, step: int) -> np.uint64:
    """One 64-bit key per (seed, step), mixed so that nearby seeds differ."""
    m64 = (1 << 64) - 1
    z = ((seed * int(GOLDEN)) & m64) ^ (step & m64)
    z = ((z ^ (z >> 30)) * int(MIX1)) & m64
    z = ((z ^ (z >> 27)) * int(MIX2)) & m64
    return np.uint64(z ^ (z >> 31))


@jit_helper
def _mix(z):
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    return z ^ (z >> S31)


@kernel
def dropout_forward(y, mask, x, key, threshold, scale):
    """mask[i] = hash(key, i) >= threshold; y = x * mask * scale."""
    t = np.uint64(threshold)
    s = typed(x, scale)
    zero = typed(x, 0.0)
    for i in prange(x.shape[0]):
        h = _mix(key + np.uint64(i) * GOLDEN) >> S40
        keep = h >= t
        mask[i] = keep
        y[i] = x[i] * s if keep else zero


@kernel
def dropout_backward(dx, dy, mask, scale):
    """dx = dy * mask * scale."""
    s = typed(dy, scale)
    zero = typed(dy, 0.0)
    for i in prange(dy.shape[0]):
        dx[i] = dy[i] * s if mask[i] else zero
