"""NumPy reference for ``fastnn.kernels.dropout`` (same names, same signatures)."""

import numpy as np

from ..kernels.dropout import H1, H2

_M64 = (1 << 64) - 1


def dropout_key(seed, step):
    """splitmix64 of (seed, step) in Python integers, split into two uint32."""
    z = ((seed * 0x9E3779B97F4A7C15) & _M64) ^ (step & _M64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return np.uint32(z & 0xFFFFFFFF), np.uint32(z >> 32)


def _hash32(x):
    # uint32 arithmetic wraps modulo 2**32, as in the kernel.
    x = x ^ (x >> np.uint32(16))
    x = x * H1
    x = x ^ (x >> np.uint32(15))
    x = x * H2
    return x ^ (x >> np.uint32(16))


def _kept(n, seed, step, threshold, offset):
    key_lo, key_hi = dropout_key(int(seed), int(step))
    # flat indices modulo 2**32, as the kernel's uint32 arithmetic
    idx = ((np.arange(n, dtype=np.uint64) + np.uint64(offset)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    h = _hash32(idx ^ np.uint32(key_lo)) ^ np.uint32(key_hi)
    return (h >> np.uint32(8)) >= np.uint32(threshold)


def kept_mask(mask, seed, step, threshold, offset=0):
    """mask[i] = 1 where element offset + i is kept (the kernels' test)."""
    mask[...] = _kept(mask.shape[0], seed, step, threshold, offset)


def dropout_forward(y, mask, x, seed, step, threshold, scale, offset=0):
    kept_mask(mask, seed, step, threshold, offset)
    y[...] = x * mask * x.dtype.type(scale)


def dropout_by_key(y, x, seed, step, threshold, scale, offset=0):
    y[...] = x * _kept(x.shape[0], seed, step, threshold, offset) * x.dtype.type(scale)


def dropout_backward(dx, dy, mask, scale):
    dx[...] = dy * mask * dy.dtype.type(scale)
