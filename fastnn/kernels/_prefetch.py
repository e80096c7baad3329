"""Software prefetch: ask for a row's cache lines before the loop that reads it.

A row kernel that first reads a row from memory and then computes on it in
L1 (softmax: a max pass, then an exp pass) leaves memory idle while it
computes: the hardware prefetchers follow demand misses, and the compute
pass makes none. Asking for the next row's lines while this row computes
overlaps the two. Softmax-CE's kernels at (4096, 1024), inputs from
memory, 2 threads, three alternating processes of the code without and
with the whole next row asked for at each row's start (microseconds):
float32 training kernel (loss and gradient) 804-910 -> 710-785, forward
818-913 -> 730-795, loss only 633-741 -> 416-454 (the copy of the same
bytes: 690-766); float64 loss only 1254-1360 -> 1084-1284, the others
within -5% to +4%. Asked for in two halves instead, the first when a row
starts and the second after the row's first pass (``prefetch_next``'s
``half``), half as many lines are in flight at once: float64 training
kernel 1945-1951 -> 1740-1743 us, float32 773-825 -> 717-776 (calls
interleaved in one process). Not used in LayerNorm, where every variant
tried ran slower (docs/design.md). A prefetch is only a hint: it never
faults and changes no result.
"""

from llvmlite import ir
from numba.core import cgutils
from numba.core import types as nbtypes
from numba.extending import intrinsic

from .._config import jit_helper

LINE_BYTES = 64


@intrinsic
def prefetch(typingctx, a, i):
    """Hint: bring the cache line of ``a[i]`` (1-D) into L1 for reading."""
    if not (isinstance(a, nbtypes.Array) and a.ndim == 1 and isinstance(i, nbtypes.Integer)):
        return None
    sig = nbtypes.void(a, i)

    def codegen(context, builder, signature, args):
        aryty, ity = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], ity, nbtypes.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read (0), keep in all cache levels (3), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@jit_helper
def prefetch_row(a, start, stop):
    """Prefetch every cache line of ``a[start:stop]`` (1-D): one hint per
    LINE_BYTES, a short scalar loop."""
    step = max(1, LINE_BYTES // a.itemsize)
    for j in range(start, stop, step):
        prefetch(a, j)


@jit_helper
def prefetch_next(a, i, half):
    """Prefetch half ``half`` (0: the first, 1: the second) of row i + 1 of
    the 2-D array ``a``, if there is one, while a kernel works on row i."""
    if i + 1 < a.shape[0]:
        row = a[i + 1]
        mid = row.shape[0] // 2
        if half == 0:
            prefetch_row(row, 0, mid)
        else:
            prefetch_row(row, mid, row.shape[0])
