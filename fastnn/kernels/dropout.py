"""Inverted dropout with counter-based, reproducible masks.

Arrays are 1-D (``functional`` passes flat views) of ``n`` elements;
``mask: (n,) uint8`` is saved by the forward (1 = kept) and reused by the
backward. Element ``i`` is kept when the top 24 bits of
``hash32(i ^ key_lo) ^ key_hi`` are at least ``threshold = round(p * 2**24)``;
``(key_lo, key_hi)`` are the two halves of a 64-bit mix of (seed, step)
(``dropout_key``; seed and step are uint64). ``hash32`` is the "lowbias32"
integer finaliser: 32-bit multiplies vectorise (a 64-bit hash per element
ran 10x slower). XOR-ing ``key_hi`` after the hash keeps two steps' masks
from being index permutations of one another. Same (seed, step), same mask,
for any thread count, in numba and NumPy alike (numba's own RNG is per
thread under ``parallel=True``).
Kept elements are scaled by ``scale = 1 / (1 - p)``. ``offset`` is the
flat index of ``x[0]`` in a larger array whose masks are wanted: a process
holding rows r0.. of a batch passes ``r0 * row_size`` and draws those rows'
masks of the whole batch (data-parallel training, ``fastnn.distributed``).
"""

import numpy as np
from numba import prange

from .._config import jit_helper, kernel, typed

H1 = np.uint32(0x7FEB352D)
H2 = np.uint32(0x846CA68B)
S8 = np.uint32(8)
S15 = np.uint32(15)
S16 = np.uint32(16)
UNIFORM_BITS = 24
CHUNK = 4096  # elements per parallel task in the 1-D kernels


# Serial cost per element of each kernel, (float32, float64), in units of
# 0.25 ns (measured one thread, 1024x1024, benchmarks/vs_torch.py's machine):
# ``functional`` passes ``work = size * cost``, so every kernel goes
# parallel at about the same serial time (PARALLEL_MIN_WORK units, ~130 us,
# against a ~50 us launch) instead of at the same element count.
COST = {"dropout_forward": (1.4, 1.4), "dropout_backward": (0.5, 1.0)}


def dropout_threshold(p: float) -> int:
    """The 24-bit integer below which an element is dropped."""
    return int(round(p * (1 << UNIFORM_BITS)))


@jit_helper
def dropout_key(seed, step):
    """(key_lo, key_hi): splitmix64 of (seed, step), split into two uint32."""
    z = np.uint64(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(step)
    z = np.uint64((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9))
    z = np.uint64((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB))
    z = z ^ (z >> np.uint64(31))
    return np.uint32(z & np.uint64(0xFFFFFFFF)), np.uint32(z >> np.uint64(32))


@jit_helper
def hash32(x):
    # numba widens uint32 arithmetic to 64 bits: truncate after each step.
    x = np.uint32(x ^ (x >> S16))
    x = np.uint32(x * H1)
    x = np.uint32(x ^ (x >> S15))
    x = np.uint32(x * H2)
    return np.uint32(x ^ (x >> S16))


@jit_helper
def kept(index, key_lo, key_hi, threshold):
    """Whether the element at flat ``index`` survives (threshold: uint32)."""
    return ((hash32(np.uint32(index ^ key_lo)) ^ key_hi) >> S8) >= threshold


@jit_helper
def dropout_row(y, mask, x, base, key_lo, key_hi, threshold, scale):
    """Dropout of a contiguous run whose first element has flat index ``base``."""
    t = np.uint32(threshold)
    s = typed(x, scale)
    zero = typed(x, 0.0)
    b = np.uint32(base & 0xFFFFFFFF)
    for j in range(x.shape[0]):
        keep = kept(np.uint32(b + np.uint32(j)), key_lo, key_hi, t)
        mask[j] = keep
        y[j] = x[j] * s if keep else zero


@kernel
def dropout_forward(y, mask, x, seed, step, threshold, scale, offset=0):
    """mask[i] = top24(hash(offset + i, key(seed, step))) >= threshold; y = x * mask * scale."""
    n = x.shape[0]
    key_lo, key_hi = dropout_key(seed, step)
    for c in prange((n + CHUNK - 1) // CHUNK):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        dropout_row(y[i0:i1], mask[i0:i1], x[i0:i1], offset + i0, key_lo, key_hi, threshold, scale)


@kernel
def dropout_backward(dx, dy, mask, scale):
    """dx = dy * mask * scale."""
    s = typed(dy, scale)
    zero = typed(dy, 0.0)
    for i in prange(dy.shape[0]):
        dx[i] = dy[i] * s if mask[i] else zero
