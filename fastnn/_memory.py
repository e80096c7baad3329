"""Allocation that keeps an update kernel's arrays out of each other's way."""

from __future__ import annotations

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
