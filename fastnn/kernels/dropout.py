"""Inverted dropout with counter-based, reproducible masks.

Arrays are 1-D (``functional`` passes flat views) of ``n`` elements;
``mask: (n,) uint8`` is saved by the forward (1 = kept) and reused by the
backward. Element ``i`` is kept when the top 24 bits of
``hash32(i ^ key_lo) ^ key_hi`` are at least ``threshold = round(p * 2**24)``;
``(key_lo, key_hi)`` are the two halves of a 64-bit mix of (seed, step)
(``dropout_key``; seed and step are uint64). ``hash32`` is the "lowbias32"
integer finaliser: 32-bit multiplies vectorise (a 64-bit hash per element
ran 10x slower), in 32-bit lanes as LLVM IR (``_kept32``). XOR-ing
``key_hi`` after the hash keeps two steps' masks from being index
permutations of one another. Same (seed, step), same mask,
for any thread count, in numba and NumPy alike (numba's own RNG is per
thread under ``parallel=True``).
Kept elements are scaled by ``scale = 1 / (1 - p)``: ``x * (mask * scale)``,
so a dropped element is a zero of x's sign (NaN for an infinite or NaN x),
as in the NumPy reference and PyTorch. ``offset`` is the
flat index of ``x[0]`` in a larger array whose masks are wanted: a process
holding rows r0.. of a batch passes ``r0 * row_size`` and draws those rows'
masks of the whole batch (data-parallel training, ``fastnn.distributed``).
"""

import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types as nbtypes
from numba.extending import intrinsic

from .._config import jit_helper, kernel, same_data, typed

H1 = np.uint32(0x7FEB352D)  # lowbias32's multipliers
H2 = np.uint32(0x846CA68B)
UNIFORM_BITS = 24
CHUNK = 4096  # elements per parallel task in the 1-D kernels


# Serial cost per element of each kernel, (float32, float64), in units of
# 0.25 ns (measured one thread, 1024x1024, benchmarks/vs_torch.py's machine):
# ``functional`` passes ``work = size * cost``, so every kernel goes
# parallel at about the same serial time (PARALLEL_MIN_WORK units, ~130 us,
# against a ~50 us launch) instead of at the same element count.
COST = {"dropout_forward": (1.0, 1.4), "dropout_backward": (0.5, 1.0), "dropout_by_key": (1.0, 1.4),
        "kept_mask": (0.4, 0.4)}


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


def _i32(value):
    """An LLVM i32 constant of the uint32 ``value`` (two's complement)."""
    return ir.IntType(32)(int(value) - (1 << 32) if int(value) >= 1 << 31 else int(value))


@intrinsic
def _kept32(typingctx, index, key_lo, key_hi, threshold):
    """``kept`` in 32-bit integers, written as LLVM IR: in numba the same
    uint32 expression is computed in 64 bits and truncated after each step,
    and the vectorised loop then ran in 64-bit lanes (``vpmullq``, 8
    elements a vector instead of 16)."""
    u32 = nbtypes.uint32
    if not all(a == u32 for a in (index, key_lo, key_hi, threshold)):
        return None

    def codegen(context, builder, signature, args):
        i, lo, hi, t = args
        x = builder.xor(i, lo)
        x = builder.xor(x, builder.lshr(x, _i32(16)))
        x = builder.mul(x, _i32(H1))
        x = builder.xor(x, builder.lshr(x, _i32(15)))
        x = builder.mul(x, _i32(H2))
        x = builder.xor(x, builder.lshr(x, _i32(16)))
        return builder.icmp_unsigned(">=", builder.lshr(builder.xor(x, hi), _i32(8)), t)

    return nbtypes.boolean(u32, u32, u32, u32), codegen


@jit_helper
def kept(index, key_lo, key_hi, threshold):
    """Whether the element at flat ``index`` survives (threshold: uint32):
    ``(hash32(index ^ key_lo) ^ key_hi) >> 8 >= threshold``."""
    return _kept32(np.uint32(index), np.uint32(key_lo), np.uint32(key_hi), np.uint32(threshold))


@jit_helper
def dropout_row(y, mask, x, base, key_lo, key_hi, threshold, scale):
    """Dropout of a contiguous run whose first element has flat index ``base``."""
    t = np.uint32(threshold)
    s = typed(x, scale)
    b = np.uint32(base & 0xFFFFFFFF)
    for j in range(x.shape[0]):
        keep = kept(np.uint32(b + np.uint32(j)), key_lo, key_hi, t)
        mask[j] = keep
        y[j] = x[j] * (typed(x, keep) * s)  # see dropout_by_key


@kernel
def dropout_forward(y, mask, x, seed, step, threshold, scale, offset=0):
    """mask[i] = top24(hash(offset + i, key(seed, step))) >= threshold; y = x * mask * scale."""
    n = x.shape[0]
    key_lo, key_hi = dropout_key(seed, step)
    in_place = same_data(y, x)  # then one array for both: see _config.same_data
    for c in prange((n + CHUNK - 1) // CHUNK):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        yc = y[i0:i1]
        if in_place:
            dropout_row(yc, mask[i0:i1], yc, offset + i0, key_lo, key_hi, threshold, scale)
        else:
            dropout_row(yc, mask[i0:i1], x[i0:i1], offset + i0, key_lo, key_hi, threshold, scale)


@kernel
def kept_mask(mask, seed, step, threshold, offset=0):
    """mask[i] = 1 where element ``offset + i`` is kept: the mask alone
    (``nn.Dropout.mask`` when its forward stored none)."""
    n = mask.shape[0]
    key_lo, key_hi = dropout_key(seed, step)
    t = np.uint32(threshold)
    for c in prange((n + CHUNK - 1) // CHUNK):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        b = np.uint32((offset + i0) & 0xFFFFFFFF)
        for j in range(i1 - i0):
            mask[i0 + j] = kept(np.uint32(b + np.uint32(j)), key_lo, key_hi, t)


@jit_helper
def dropout_row_by_key(y, x, base, key_lo, key_hi, threshold, scale):
    """``dropout_row`` without the mask."""
    t = np.uint32(threshold)
    s = typed(x, scale)
    b = np.uint32(base & 0xFFFFFFFF)
    for j in range(x.shape[0]):
        y[j] = x[j] * (typed(x, kept(np.uint32(b + np.uint32(j)), key_lo, key_hi, t)) * s)


@kernel
def dropout_by_key(y, x, seed, step, threshold, scale, offset=0):
    """y = x * mask * scale with the mask of (seed, step) computed, not stored:
    the forward without its mask, and the backward (dx from dy) without
    reading one. Written as a product with the mask as a float, which
    runs at copy speed with the hash; ``x * s if keep else 0`` (masked
    multiplies) took twice as long (docs/design.md)."""
    n = x.shape[0]
    key_lo, key_hi = dropout_key(seed, step)
    in_place = same_data(y, x)  # then one array for both: see _config.same_data
    for c in prange((n + CHUNK - 1) // CHUNK):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        yc = y[i0:i1]
        if in_place:
            dropout_row_by_key(yc, yc, offset + i0, key_lo, key_hi, threshold, scale)
        else:
            dropout_row_by_key(yc, x[i0:i1], offset + i0, key_lo, key_hi, threshold, scale)


@jit_helper
def _dropout_backward(dx, dy, mask, scale):
    s = typed(dy, scale)
    for i in prange(dy.shape[0]):
        dx[i] = dy[i] * (typed(dy, mask[i]) * s)


@kernel
def dropout_backward(dx, dy, mask, scale):
    """dx = dy * mask * scale."""
    if same_data(dx, dy):  # in place: one array for both (see _config.same_data)
        _dropout_backward(dx, dx, mask, scale)
    else:
        _dropout_backward(dx, dy, mask, scale)
