"""Allocation: an update kernel's arrays out of each other's way, and a pool
that reuses large outputs instead of faulting fresh pages in every call."""

from __future__ import annotations

import collections
import ctypes
import math
import numbers
import os
import threading
import weakref

import numpy as np

PAGE = 4096


def zeros_at_same_page_offset(a: np.ndarray) -> np.ndarray:
    """Zeros of ``a``'s shape and dtype, C-contiguous, starting at the same
    address modulo 4096 as ``a``.

    An optimizer update streams a parameter, its gradient and its state
    (``p``, ``g``, ``m``, ``v``) through one loop, storing to three of them.
    When two streams start a small multiple of 64 bytes apart modulo 4096,
    loads falsely wait on stores to the other stream (the CPU compares only
    the low 12 address bits): Adam on 200k float32 elements took 73-80 us
    with such offsets against 58 us with all four at the same offset
    (2-core AMD EPYC, see docs/design.md). glibc places a large array at a
    page start until the process has freed a larger one; after that, from
    the heap at any 16-byte offset. Giving each gradient and state array its parameter's offset keeps
    the update on the fast side whatever the allocator did. (In the seed's
    step, where the arrays were page-aligned anyway, Adam's time did not
    change measurably: 111-140 us against 122-155 us a step, process to
    process.)
    """
    if a.nbytes < PAGE:
        return np.zeros(a.shape, a.dtype)
    buf = np.zeros(a.nbytes + PAGE, np.uint8)
    shift = (a.ctypes.data - buf.ctypes.data) % PAGE
    return buf[shift:shift + a.nbytes].view(a.dtype).reshape(a.shape)


# ---------------------------------------------------------------- output pool

# glibc serves smaller blocks from its heap again without new faults (its
# mmap threshold grows with the largest block freed, up to 32 MiB); from
# 32 MiB on every array is mmapped and faulted in anew. Pooling 16 MiB
# outputs as well cost Dropout, BatchNorm and softmax-CE 2-3% at (4096,
# 1024) float32 (alternating processes, eight pairs), so the pool starts here.
POOL_MIN_BYTES = 32 << 20
# Where glibc puts such a block in its page: pooled outputs start where
# fresh ones did (a softmax-CE output at the page offset of its input ran
# 10% slower than at 2 KiB from it: the rows alias in the store buffer;
# fresh 32 MiB arrays had the same offset as their inputs too).
POOL_PAGE_OFFSET = 16
DEFAULT_POOL_IDLE_BYTES = 256 << 20


class OutputPool:
    """Large output arrays (``min_bytes`` and up, ``POOL_MIN_BYTES`` for
    fastnn's) whose memory is used again once every view of them is gone.

    A fresh array of 32 MiB or more is ``mmap``ed by glibc and faulted in,
    a page at a time, on its first write, every call: a (4096, 1024)
    float64 ReLU forward + backward spent more time faulting its two
    outputs than computing them. Here each output
    is a view of a block that stays mapped: the array's memory is exported
    by a small ctypes object that every view of the array keeps alive (its
    ``base`` chain), and when that object dies the block goes back to the
    pool for the next array of the same byte size. Idle blocks beyond
    ``max_idle_bytes`` are freed, least recently returned first; 0 turns
    the pool off (plain ``np.empty``)."""

    def __init__(self, max_idle_bytes: int = DEFAULT_POOL_IDLE_BYTES, min_bytes: int = POOL_MIN_BYTES):
        self.min_bytes = int(min_bytes)
        self._idle: dict[int, collections.deque] = {}  # nbytes -> (seq, block), oldest first
        self._idle_bytes = 0
        self._seq = 0
        # Reentrant: a garbage collection inside the lock may finalize a lease.
        self._lock = threading.RLock()
        self.max_idle_bytes = int(max_idle_bytes)
        self.reused = 0
        self.allocated = 0

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array, as ``np.empty(shape, dtype)``."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize  # shape: a tuple of ints
        if nbytes < self.min_bytes or self.max_idle_bytes <= 0 or dtype.hasobject:
            return np.empty(shape, dtype)
        block = None
        with self._lock:
            blocks = self._idle.get(nbytes)
            if blocks:
                block = blocks.pop()[1]
                self._idle_bytes -= nbytes
                self.reused += 1
            else:
                self.allocated += 1
        if block is None:
            block = np.empty(nbytes + PAGE, np.uint8)
        start = block.ctypes.data + (POOL_PAGE_OFFSET - block.ctypes.data) % PAGE
        lease = (ctypes.c_char * nbytes).from_address(start)
        weakref.finalize(lease, self._give_back, nbytes, block).atexit = False
        return np.frombuffer(lease, dtype).reshape(shape)

    def _give_back(self, nbytes: int, block: np.ndarray) -> None:
        with self._lock:
            if self.max_idle_bytes > 0:
                self._seq += 1
                self._idle.setdefault(nbytes, collections.deque()).append((self._seq, block))
                self._idle_bytes += nbytes
            self._trim()

    def _trim(self) -> None:
        """Free the least recently returned idle blocks beyond max_idle_bytes."""
        while self._idle_bytes > max(self.max_idle_bytes, 0):
            nbytes = min((q[0][0], n) for n, q in self._idle.items() if q)[1]
            self._idle[nbytes].popleft()
            self._idle_bytes -= nbytes

    def set_max_idle_bytes(self, max_idle_bytes: int) -> None:
        with self._lock:
            self.max_idle_bytes = int(max_idle_bytes)
            self._trim()

    def info(self) -> dict:
        with self._lock:
            return {"max_idle_bytes": self.max_idle_bytes, "idle_bytes": self._idle_bytes,
                    "idle_blocks": sum(len(q) for q in self._idle.values()),
                    "reused": self.reused, "allocated": self.allocated}

    def _after_fork_in_child(self) -> None:
        # Another thread of the parent may have held the lock when it forked.
        self._lock = threading.RLock()


def _idle_limit_from_environment() -> int:
    text = os.environ.get("FASTNN_OUTPUT_POOL_MB")
    if text is None:
        return DEFAULT_POOL_IDLE_BYTES
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise ValueError(f"FASTNN_OUTPUT_POOL_MB must be a number of MiB >= 0, got {text!r}")
    return int(mb * (1 << 20))


OUTPUT_POOL = OutputPool(_idle_limit_from_environment())
os.register_at_fork(after_in_child=OUTPUT_POOL._after_fork_in_child)


def empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` (C order), from the output pool at
    ``POOL_MIN_BYTES`` and up. ``dtype`` must be an ``np.dtype``: the size
    check comes first, so that smaller outputs pay ~0.1 us for it."""
    if math.prod(shape) * dtype.itemsize < POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    return OUTPUT_POOL.empty(shape, dtype)


def set_output_pool_limit(max_idle_bytes: int) -> None:
    """The most memory fastnn keeps for reuse by its large outputs (forward
    outputs, input gradients, masks of 32 MiB and up) once the arrays it gave
    out are gone; the least recently freed blocks beyond it go back to the
    C allocator. Default 256 MiB (``FASTNN_OUTPUT_POOL_MB`` at import); 0
    turns the pool off: every output is a fresh ``np.empty``."""
    if isinstance(max_idle_bytes, (bool, np.bool_)) or not isinstance(max_idle_bytes, numbers.Integral) \
            or max_idle_bytes < 0:
        raise ValueError(f"max_idle_bytes must be an int >= 0, got {max_idle_bytes!r}")
    OUTPUT_POOL.set_max_idle_bytes(int(max_idle_bytes))


def output_pool_info() -> dict:
    """The output pool's limit, its idle bytes and blocks, and how many
    outputs it served from an idle block (``reused``) or a new one
    (``allocated``)."""
    return OUTPUT_POOL.info()
