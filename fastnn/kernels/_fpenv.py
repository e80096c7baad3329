"""Flush-to-zero for the work of a numba kernel, on the thread that runs it.

On x86-64, ``ftz_begin()`` sets the flush-to-zero (FTZ) and
denormals-are-zero (DAZ) bits of the calling thread's MXCSR register and
returns the previous value; ``ftz_end(previous)`` restores it. Between the
two, subnormal inputs read as zero and subnormal results are stored as zero,
so arithmetic never takes the x86 microcode assist (about 100x slower) that
subnormals cost. Call both from the same thread, inside each ``prange``
iteration of a parallel kernel (every pool thread has its own MXCSR), around
work that does not call back into Python. Code outside keeps IEEE behaviour.

On other architectures both are no-ops (``FLUSHES_SUBNORMALS`` is False):
arithmetic keeps IEEE subnormals there.
"""

import platform

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .._config import jit_helper

FLUSHES_SUBNORMALS = platform.machine().lower() in ("x86_64", "amd64")

_FTZ_DAZ = 0x8040  # MXCSR bit 15 (flush to zero) | bit 6 (denormals are zero)
_I8P = ir.IntType(8).as_pointer()
_MXCSR_FN = ir.FunctionType(ir.VoidType(), [_I8P])


@intrinsic
def _read_mxcsr(typingctx):
    def codegen(context, builder, sig, args):
        if not FLUSHES_SUBNORMALS:
            return ir.Constant(ir.IntType(32), 0)
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        fn = cgutils.get_or_insert_function(builder.module, _MXCSR_FN, "llvm.x86.sse.stmxcsr")
        builder.call(fn, [builder.bitcast(slot, _I8P)])
        return builder.load(slot)

    return types.uint32(), codegen


@intrinsic
def _write_mxcsr(typingctx, value):
    def codegen(context, builder, sig, args):
        if FLUSHES_SUBNORMALS:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            fn = cgutils.get_or_insert_function(builder.module, _MXCSR_FN, "llvm.x86.sse.ldmxcsr")
            builder.call(fn, [builder.bitcast(slot, _I8P)])
        return context.get_dummy_value()

    return types.void(types.uint32), codegen


@jit_helper
def ftz_begin():
    """Set FTZ and DAZ on this thread; return the previous mode for ``ftz_end``."""
    previous = _read_mxcsr()
    _write_mxcsr(previous | np.uint32(_FTZ_DAZ))
    return previous


@jit_helper
def ftz_end(previous):
    """Restore this thread's floating-point mode saved by ``ftz_begin``."""
    _write_mxcsr(previous)
