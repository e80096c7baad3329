"""Vectorisable float32 exp and tanh for use inside kernels.

numba lowers float32 ``np.exp``/``np.tanh`` to scalar libm calls that stop
LLVM from vectorising the loop around them: measured on 1M elements, 10 ms
for exp and 63 ms for tanh, against 0.7 ms for the forms below (NumPy's own
SIMD versions: 3.4 ms and 8.3 ms). float64 keeps ``np.exp``/``np.tanh``.
Maximum relative error, measured against float64: 3e-7 for both.
"""

import numpy as np
from llvmlite import ir
from numba.core import types as nbtypes
from numba.extending import intrinsic, overload


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret an int32 as float32 (for building 2**n)."""
    sig = nbtypes.float32(nbtypes.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


# Cephes expf: exp(x) = 2**n * exp(r), |r| <= ln(2)/2, degree-5 polynomial.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                   4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_P0, _P1, _P2, _P3, _P4, _P5 = _P
_EXP_LO = np.float32(-87.0)  # below this exp(x) is subnormal in float32: return 0


def exp_nonpos(v):
    """exp(v) for v <= 0 (what softmax and sigmoid need); NaN stays NaN."""
    return np.exp(v)


@overload(exp_nonpos)
def _exp_nonpos_overload(v):
    if v != nbtypes.float32:
        return lambda v: np.exp(v)

    def exp32(v):
        c = max(v, _EXP_LO)
        n = np.floor(c * _LOG2E + np.float32(0.5))
        r = c - n * _LN2_HI - n * _LN2_LO
        p = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * (r * r) + r + np.float32(1.0)
        p = p * _f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
        if v >= _EXP_LO:
            return p
        return np.float32(0.0) if v < _EXP_LO else v  # the last case: NaN

    return exp32


# Eigen's rational approximation of tanh for float32.
_A1, _A3, _A5, _A7, _A9, _A11, _A13 = (np.float32(c) for c in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
_B0, _B2, _B4, _B6 = (np.float32(c) for c in (
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))


def tanh_value(v):
    """tanh(v); NaN stays NaN."""
    return np.tanh(v)


@overload(tanh_value)
def _tanh_value_overload(v):
    if v != nbtypes.float32:
        return lambda v: np.tanh(v)

    def tanh32(v):
        lim = np.float32(9.0)  # tanh is +-1 in float32 beyond
        c = min(max(v, -lim), lim)
        c2 = c * c
        p = ((((((c2 * _A13 + _A11) * c2 + _A9) * c2 + _A7) * c2 + _A5) * c2 + _A3) * c2 + _A1) * c
        q = ((c2 * _B6 + _B4) * c2 + _B2) * c2 + _B0
        # tiny |v|: tanh(v) = v; NaN fails the test and passes through
        return p / q if abs(v) >= np.float32(4e-4) else v

    return tanh32
