"""Numba flags, threading and the serial/parallel kernel wrapper.

This module must be imported before any parallel kernel runs, because two
settings only take effect when numba's threading layer is first loaded:

* ``OMP_WAIT_POLICY=PASSIVE``. GNU OpenMP threads spin for a while after a
  parallel region. On a 2-core machine they then fight OpenBLAS's threads,
  which spin too: measured here, a GEMM followed by a small parallel kernel
  took 8.6 ms instead of 0.24 ms. Passive waiting removes the fight while
  both pools keep all cores for their own work.
* The threading layer: ``omp`` first (thread-safe, cheapest launch: 7 us
  against 57 us for ``workqueue``), then ``tbb``, then ``workqueue``.

Both can be overridden with the environment (``OMP_WAIT_POLICY``,
``FASTNN_THREADING_LAYER``) before ``import fastnn``.
"""

from __future__ import annotations

import os
import threading
import types
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit  # noqa: E402
from numba.core import types as nbtypes  # noqa: E402
from numba.extending import overload  # noqa: E402

_layer = os.environ.get("FASTNN_THREADING_LAYER")
if _layer:
    numba.config.THREADING_LAYER = _layer
else:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def _setup_cache_dir() -> None:
    """Point numba's cache at a writable place when the package dir is not.

    numba writes its cache next to the source (``__pycache__``); on a
    read-only install it would otherwise fail or fall back silently per
    function. ``NUMBA_CACHE_DIR`` set by the user always wins.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    pkg_cache = os.path.join(os.path.dirname(__file__), "kernels", "__pycache__")
    try:
        os.makedirs(pkg_cache, exist_ok=True)
        if os.access(pkg_cache, os.W_OK):
            return
    except OSError:
        pass
    base = os.environ.get("XDG_CACHE_HOME")
    if not base and os.environ.get("HOME"):
        base = os.path.join(os.environ["HOME"], ".cache")
    candidates = [os.path.join(base, "fastnn", "numba")] if base else []
    import tempfile

    candidates.append(os.path.join(tempfile.gettempdir(), f"fastnn-numba-{os.getuid()}"))
    for path in candidates:
        try:
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                numba.config.CACHE_DIR = path
                return
        except OSError:
            continue
    warnings.warn(
        "fastnn: no writable directory for numba's compile cache; kernels will be "
        "compiled in every new process (set NUMBA_CACHE_DIR to fix)",
        RuntimeWarning,
        stacklevel=2,
    )


_setup_cache_dir()

# fastmath without 'nnan'/'ninf': NaN and Inf must propagate so that the
# non-finite checks of the training loop see them.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
NJIT_FLAGS = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)

# Below this many elements a parallel launch costs more than it saves.
PARALLEL_MIN_WORK = int(os.environ.get("FASTNN_PARALLEL_MIN_WORK", 1 << 16))

_forked_child = False


def _after_fork_in_child() -> None:
    # GNU OpenMP cannot start a parallel region in a child forked after the
    # parent used it (numba aborts the process). Run serially in the child.
    global _forked_child
    _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# workqueue is not thread-safe: serialise parallel launches when it is in use.
_launch_lock = threading.Lock()


def _needs_launch_lock() -> bool:
    try:
        return numba.threading_layer() == "workqueue"
    except ValueError:  # no parallel kernel has run yet
        return False


class Kernel:
    """A numba kernel compiled twice: serially and with ``parallel=True``.

    ``kernel(*args, work=n)`` runs the parallel build when ``n`` elements of
    work make a launch worth it, else the serial build (the same source:
    ``prange`` is ``range`` there). A forked child always runs serially.
    """

    def __init__(self, fn):
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.py_func = fn
        # Distinct qualnames keep the two builds apart in numba's on-disk cache.
        serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__)
        serial_fn.__qualname__ = fn.__qualname__ + "__serial"
        self.serial = njit(**NJIT_FLAGS)(serial_fn)
        self.parallel = njit(parallel=True, **NJIT_FLAGS)(fn)

    def __call__(self, *args, work: int = 0):
        if work >= PARALLEL_MIN_WORK and not _forked_child:
            if _needs_launch_lock():
                with _launch_lock:
                    return self.parallel(*args)
            return self.parallel(*args)
        return self.serial(*args)

    def __repr__(self) -> str:
        return f"<fastnn kernel {self.__name__}>"


def kernel(fn) -> Kernel:
    """Decorator: compile ``fn`` as a :class:`Kernel`."""
    return Kernel(fn)


def jit_helper(fn):
    """Decorator for small functions called from kernels (inlined, cached)."""
    return njit(inline="always", **NJIT_FLAGS)(fn)


def typed(like, value):
    """``value`` as a scalar of ``like``'s dtype (inside kernels).

    A bare float literal is float64 in numba and silently promotes float32
    arithmetic; ``typed(x, 0.5)`` keeps float32 math in float32.
    """
    return like.dtype.type(value)


@overload(typed, inline="always")
def _typed_overload(like, value):
    dtype = like.dtype if isinstance(like, nbtypes.Array) else like
    if dtype == nbtypes.float32:
        return lambda like, value: np.float32(value)
    return lambda like, value: np.float64(value)


def set_num_threads(n: int) -> None:
    """Set the number of threads for fastnn's parallel kernels."""
    numba.set_num_threads(int(n))


def get_num_threads() -> int:
    return numba.get_num_threads()


def threading_info() -> dict:
    """Which threading layer and thread counts are in use (for reports)."""
    from threadpoolctl import threadpool_info

    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started (first parallel kernel not run yet)"
    return {
        "numba_threading_layer": layer,
        "numba_num_threads": numba.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "blas": [
            {k: d.get(k) for k in ("internal_api", "num_threads", "version", "threading_layer")}
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ],
        "parallel_min_work": PARALLEL_MIN_WORK,
    }
