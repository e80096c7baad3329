"""Matrix products from inside numba kernels, through NumPy's own BLAS.

``gemm(fn, wide, C, A, B, trans_a, trans_b)`` computes ``C = op(A) @ op(B)``
with the ``cblas_sgemm``/``cblas_dgemm`` at address ``fn`` (found by
``fastnn._blas``: the library NumPy itself calls, so its thread pool and
its results are np.matmul's). ``wide``: the library takes 64-bit integers
(NumPy's OpenBLAS builds, ``scipy_cblas_sgemm64_``), else 32-bit.

The address is an argument, not a global, so that the kernels that call
it can be cached on disk (numba refuses to cache a function holding a
ctypes pointer).
"""

import numpy as np
from llvmlite import ir
from numba.core import types as nbtypes
from numba.extending import intrinsic

from numba import njit

from .._config import NJIT_FLAGS, jit_helper, typed

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


@intrinsic
def _cblas_gemm(typingctx, fn, order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Call the C function at address ``fn`` with cblas_?gemm's arguments;
    ``a``, ``b``, ``c`` are data addresses (ints), the integer widths those
    of the arguments."""
    sig = nbtypes.void(fn, order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        ll = [context.get_value_type(t) for t in signature.args]
        ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ll[1], ll[2], ll[3], ll[4], ll[5], ll[6], ll[7], ptr,
                                               ll[9], ptr, ll[11], ll[12], ptr, ll[14]])
        callee = builder.inttoptr(args[0], fnty.as_pointer())
        a_, b_, c_ = (builder.inttoptr(args[i], ptr) for i in (8, 10, 13))
        builder.call(callee, [args[1], args[2], args[3], args[4], args[5], args[6], args[7], a_,
                              args[9], b_, args[11], args[12], c_, args[14]])
        return context.get_dummy_value()

    return sig, codegen


@jit_helper
def gemm(fn, wide, C, A, B, trans_a, trans_b):
    """C (M, N) = op(A) @ op(B), op = transpose where asked; A, B, C
    C-contiguous, C not overlapping A or B. ``fn``: the address of
    cblas_sgemm (float32) or cblas_dgemm (float64) for C's dtype."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    if m == 0 or n == 0:
        return
    one = typed(C, 1.0)
    zero = typed(C, 0.0)
    ta = np.int32(TRANS if trans_a else NO_TRANS)
    tb = np.int32(TRANS if trans_b else NO_TRANS)
    if k == 0:  # BLAS may leave C untouched
        for i in range(m):
            for j in range(n):
                C[i, j] = zero
        return
    if wide:
        _cblas_gemm(fn, np.int32(ROW_MAJOR), ta, tb, np.int64(m), np.int64(n), np.int64(k), one,
                    A.ctypes.data, np.int64(A.shape[1]), B.ctypes.data, np.int64(B.shape[1]), zero,
                    C.ctypes.data, np.int64(n))
    else:
        _cblas_gemm(fn, np.int32(ROW_MAJOR), ta, tb, np.int32(m), np.int32(n), np.int32(k), one,
                    A.ctypes.data, np.int32(A.shape[1]), B.ctypes.data, np.int32(B.shape[1]), zero,
                    C.ctypes.data, np.int32(n))


@njit(**NJIT_FLAGS)
def gemm_any(fn, wide, C, A, B, trans_a, trans_b):
    """``gemm`` callable from Python (the tests)."""
    gemm(fn, wide, C, A, B, trans_a, trans_b)
