"""Numba flags, threading and the serial/parallel kernel wrapper.

A training step alternates BLAS matrix products (NumPy's OpenBLAS and its
thread pool) with numba kernels. fastnn changes nothing that other
libraries in the process read: no ``OMP_WAIT_POLICY``, no
``OPENBLAS_THREAD_TIMEOUT``, no BLAS thread count (unless the user asks,
with ``set_num_threads``). Its thread design, measured on the 2-core
development machine (docs/design.md has the figures):

* OpenBLAS at its defaults. Telling its idle threads to sleep at once
  (``OPENBLAS_THREAD_TIMEOUT=4``) made the products themselves 1.4x slower.
* numba's ``tbb`` threading layer (Intel oneTBB, the ``tbb`` package)
  where it loads, else ``workqueue``. TBB's workers spin briefly after a
  launch, yielding the core, then sleep: a launch right after another costs
  about 3 us against 64-92 us on ``workqueue`` (whose pthreads sleep on a
  condition variable), and a BLAS product right after a TBB launch runs
  nearly at its own speed (171 against 166 us on 2 cores, 150 against 132 on
  16). The ``omp`` layer shares GNU OpenMP with PyTorch (one
  libgomp per process): its threads spin after a parallel region unless
  ``OMP_WAIT_POLICY=PASSIVE``, which fought OpenBLAS's spinning threads (an
  epoch 10x slower) and, set by fastnn, made PyTorch in the same process
  1.9x slower.
* Kernels below a threshold run serially in the calling thread: no launch,
  no wake-up, no contention with BLAS's threads. Between BLAS products (a
  Sequential's layers, an optimizer update, the compiled step), where
  OpenBLAS's workers still spin on the other cores, ``STEP_PARALLEL_MIN_WORK``
  (2**20 units of work on 2 threads, 1.5M on 16): every kernel of the seed
  network's step runs serially on 2 and 16 cores. Elsewhere (a module or a
  functional op called on its own) ``PARALLEL_MIN_WORK``: the same on
  workqueue, 2**18 on 2 threads and 140k on 16 on tbb.

Overrides, read at ``import fastnn``: ``FASTNN_THREADING_LAYER`` (e.g.
``omp``, with your own ``OMP_WAIT_POLICY``), ``NUMBA_THREADING_LAYER``,
``FASTNN_PARALLEL_MIN_WORK``, ``FASTNN_NUM_THREADS``.
"""

from __future__ import annotations

import functools
import numbers
import os
import sys
import threading
import types
import warnings

import numba
import numpy as np
from numba import njit
from numba.core import types as nbtypes
from numba.extending import overload


def _load_tbb() -> bool:
    """Make numba's ``tbb`` threading layer loadable; True when it is.

    The ``tbb`` wheel puts ``libtbb.so.12`` in the environment's ``lib``
    directory, which the dynamic loader does not search in a virtual
    environment, so numba cannot start it there on its own. Loading the
    library by its full path first lets numba's ``tbbpool`` find it by name.
    """
    import ctypes
    import importlib.metadata

    names = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}
    name = names.get(sys.platform)
    if name is None:
        return False
    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    paths = [str(f.locate()) for f in files if f.name == name]
    for path in paths + [name]:  # the wheel's copy, then the loader's search path
        try:
            lib = ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
            if lib.TBB_runtime_interface_version() < 12060:  # what numba requires
                return False
            from numba.np.ufunc import tbbpool  # noqa: F401  (links against it)
            return True
        except (OSError, AttributeError, ImportError):
            continue
    return False


# numba reads NUMBA_THREADING_LAYER into this setting; "default" means unset.
_layer = os.environ.get("FASTNN_THREADING_LAYER")
if _layer:
    numba.config.THREADING_LAYER = _layer
# True when the parallel kernels will run on tbb: asked for (numba's "safe"
# and "threadsafe" pick it first) or left to fastnn, and loadable.
_TBB = numba.config.THREADING_LAYER in ("default", "tbb", "safe", "threadsafe") and _load_tbb()
if numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "tbb" if _TBB else "workqueue"


def _writable_dir(path: str, private: bool = False) -> bool:
    """Create ``path`` if needed and prove it writable by writing to it (what
    numba itself checks; ``os.access`` says yes to root on some read-only
    mounts). ``private``: in a shared place (/tmp) the directory must be ours
    and closed to others, or another user could plant cache files that numba
    would load as machine code."""
    import tempfile

    try:
        os.makedirs(path, mode=0o700 if private else 0o777, exist_ok=True)
        if private:
            st = os.stat(path)
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _setup_cache_dir() -> bool:
    """Point numba's cache at a writable place when the package dir is not.

    numba writes its cache next to the source (``__pycache__``); on a
    read-only install, with no usable home, numba raises at import ("no
    locator available"). ``NUMBA_CACHE_DIR`` set by the user always wins.
    Returns False when no place is writable: kernels are then not cached.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    if _writable_dir(os.path.join(os.path.dirname(__file__), "kernels", "__pycache__")):
        return True
    candidates = []
    base = os.environ.get("XDG_CACHE_HOME")
    if not base and os.environ.get("HOME"):
        base = os.path.join(os.environ["HOME"], ".cache")
    if base:
        candidates.append((os.path.join(base, "fastnn", "numba"), False))
    import tempfile

    try:
        candidates.append((os.path.join(tempfile.gettempdir(), f"fastnn-numba-{os.getuid()}"), True))
    except OSError:  # no usable temporary directory at all
        pass
    for path, private in candidates:
        if _writable_dir(path, private):
            numba.config.CACHE_DIR = path
            return True
    warnings.warn(
        "fastnn: no writable directory for numba's compile cache; kernels will be "
        "compiled in every new process (set NUMBA_CACHE_DIR to fix)",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


_CACHE = _setup_cache_dir()

# fastmath without 'nnan'/'ninf': NaN and Inf must propagate so that the
# non-finite checks of the training loop see them.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
NJIT_FLAGS = dict(cache=_CACHE, fastmath=FASTMATH, error_model="numpy", nogil=True)

# Two thresholds, in units of work (cost-weighted elements, see Kernel). A
# parallel launch must save more than it costs: with T threads it saves
# (1 - 1/T) of the serial time.
#
# STEP_PARALLEL_MIN_WORK, for kernels between BLAS products (a Sequential's
# layers, the compiled step, an optimizer update): after a product
# OpenBLAS's workers spin for a while on the other cores, and a parallel
# kernel there shares them. LAUNCH_WORK * T / (T - 1) * growth(T), calibrated
# in training on 2 threads: 2**20 there, where the serial Adam update of the
# seed network (940k) measured 10% faster per epoch than the parallel one (on
# tbb too: 112-148 against 129-202 us a step); growth(T) = 1 + (T - 2) / 8
# puts 16 threads at 1.5M, which keeps that update serial (the seed network
# trained 1.15-1.27x faster per epoch on 16 cores with it serial; a 1M-element
# ReLU right after a product took 384 us on 16 tbb threads, 359 serially).
#
# PARALLEL_MIN_WORK, for a kernel called on its own (a module, a functional
# op): on workqueue the same (a launch costs 64-92 us on 2 threads and about
# 350 us on 16, where it wakes its workers one by one); on tbb, whose launch
# costs 3-25 us on 2 threads and 20-40 us on 16, TBB_LAUNCH_WORK * T / (T - 1):
# 2**18 on 2 threads (a 1M-element ReLU 61-100 us on 2 threads, 97-106
# serially), 140k on 16 (111 against 331 us; 262k elements: 75 against 61).
# One thread: never parallel. FASTNN_PARALLEL_MIN_WORK sets both.
LAUNCH_WORK = 1 << 19
TBB_LAUNCH_WORK = 1 << 17
_MIN_WORK_ENV = os.environ.get("FASTNN_PARALLEL_MIN_WORK")


def _step_parallel_min_work(threads: int) -> int:
    if _MIN_WORK_ENV:
        return int(_MIN_WORK_ENV)
    if threads <= 1:
        return 1 << 62
    return int(LAUNCH_WORK * threads / (threads - 1) * (1 + (threads - 2) / 8))


def _parallel_min_work(threads: int, tbb: bool | None = None) -> int:
    if _MIN_WORK_ENV or threads <= 1 or not (_TBB if tbb is None else tbb):
        return _step_parallel_min_work(threads)
    return int(TBB_LAUNCH_WORK * threads / (threads - 1))


PARALLEL_MIN_WORK = _parallel_min_work(numba.config.NUMBA_NUM_THREADS)
STEP_PARALLEL_MIN_WORK = _step_parallel_min_work(numba.config.NUMBA_NUM_THREADS)

_local = threading.local()


class between_products:
    """Context manager: the kernels called inside run between BLAS products
    (a Sequential's layers, an optimizer update) and go parallel only from
    ``STEP_PARALLEL_MIN_WORK``. Per thread; nests."""

    __slots__ = ("_outer",)

    def __enter__(self):
        self._outer = getattr(_local, "between_products", False)
        _local.between_products = True
        return self

    def __exit__(self, *exc):
        _local.between_products = self._outer
        return False

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


# None until the first parallel launch shows which layer numba loaded;
# launches are serialised until then.
_lock_launches = None


def _locked_launch(dispatcher, args):
    global _lock_launches
    with _launch_lock:
        result = dispatcher(*args)
        _lock_launches = numba.threading_layer() == "workqueue"
        return result


@functools.lru_cache(maxsize=None)
def _source_tag(path: str) -> str:
    """A hash of the sibling kernel files that the kernel file ``path``
    imports from (recursively) and of this file, put in the kernel's cache
    name: numba checks only a kernel's own file before reusing its cache, so
    a kernel would keep a helper or constant imported from another file
    (an activation, the dropout hash, column_sums) as it was when first cached
    (numba/numba#1833)."""
    import hashlib
    import re

    if not _CACHE:
        return ""
    h = hashlib.sha1()
    try:
        seen, todo = set(), [path]
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            with open(p, "rb") as f:
                src = f.read()
            if p != path:
                h.update(src)
            todo += [os.path.join(os.path.dirname(p), m.decode() + ".py")
                     for m in re.findall(rb"^from \.(\w+) import", src, re.M)]
        with open(__file__, "rb") as f:
            h.update(f.read())
    except OSError:
        return ""
    return "__" + h.hexdigest()[:10]


# A kernel that reads the global PARALLEL_BUILD sees True in its parallel
# build and False in its serial one (numba folds it as a constant), to shape
# its work for the build that runs it. Such a kernel gets a copy of its
# module's globals, taken when it is defined: it may use only names defined
# above it.
PARALLEL_BUILD = False


def _renamed(fn, suffix, parallel=False):
    scope = fn.__globals__
    if "PARALLEL_BUILD" in fn.__code__.co_names:
        scope = {**scope, "PARALLEL_BUILD": parallel}
    f = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    f.__qualname__ = fn.__qualname__ + suffix
    return f


def specialise(template, flags=None, **bindings):
    """njit a copy of ``template`` whose global names in ``bindings`` are
    bound to the given jitted functions: one loop per bound function, each
    its own compiled function (seven variants inlined into one kernel
    stopped LLVM from vectorising them), cached under its own name.
    ``flags``: numba's options (default NJIT_FLAGS)."""
    suffix = "__" + "_".join(f.__name__.split("__")[0] for f in bindings.values())
    fn = types.FunctionType(template.__code__, {**template.__globals__, **bindings},
                            template.__name__ + suffix, template.__defaults__)
    fn.__qualname__ = template.__qualname__ + suffix + _source_tag(template.__code__.co_filename)
    return njit(**(NJIT_FLAGS if flags is None else flags))(fn)


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
        tag = _source_tag(fn.__code__.co_filename)
        self.serial = njit(**NJIT_FLAGS)(_renamed(fn, "__serial" + tag))
        self.parallel = njit(parallel=True, **NJIT_FLAGS)(_renamed(fn, tag, parallel=True))

    def __call__(self, *args, work: int = 0):
        if work >= PARALLEL_MIN_WORK and not _forked_child and (
                work >= STEP_PARALLEL_MIN_WORK or not getattr(_local, "between_products", False)):
            if _lock_launches is False:
                return self.parallel(*args)
            return _locked_launch(self.parallel, args)
        return self.serial(*args)

    def __repr__(self) -> str:
        return f"<fastnn kernel {self.__name__}>"


# Functions that only orchestrate kernels (kernels/step.py): no fastmath, so
# that the little arithmetic they do rounds as NumPy's would.
STEP_FLAGS = dict(cache=_CACHE, error_model="numpy", nogil=True)


def compiled(fn):
    """Decorator: ``njit`` with STEP_FLAGS, serial, cached under a name that
    changes with the kernel files it calls (see ``_source_tag``)."""
    return njit(**STEP_FLAGS)(_renamed(fn, _source_tag(fn.__code__.co_filename)))


def kernel(fn) -> Kernel:
    """Decorator: compile ``fn`` as a :class:`Kernel`."""
    return Kernel(fn)


def jit_helper(fn):
    """Decorator for small functions called from kernels (inlined, cached)."""
    return njit(inline="always", **NJIT_FLAGS)(fn)


def jit_loop(fn):
    """Decorator for a loop that a kernel calls once per block of its work:
    compiled on its own, not inlined, so LLVM optimises it as the top-level
    loop of a function (inlined into a kernel's loop over blocks, GELU's
    element loop ran 6% slower)."""
    return njit(**NJIT_FLAGS)(fn)


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


def is_float64(a) -> bool:
    """Whether array ``a`` holds float64, as a compile-time constant inside
    kernels. (numba reads ``a.itemsize`` from the array at run time, so
    ``if a.itemsize == 8`` compiles both branches in: LayerNorm's float32
    backward at (64, 256) ran 5.1-5.3 us with it against 4.7-4.8.)"""
    return a.dtype == np.float64


@overload(is_float64, inline="always")
def _is_float64_overload(a):
    if isinstance(a, nbtypes.Array) and a.dtype == nbtypes.float64:
        return lambda a: True
    return lambda a: False


def same_data(a, b) -> bool:
    """Whether arrays ``a`` and ``b`` start at the same address: a kernel
    called in place (``out`` is an input), inside kernels and in Python.

    LLVM vectorises a loop ``y[i] = f(x[i])`` behind a run-time check that
    y and x do not overlap; in place they do, and the loop ran its scalar
    fallback: 3-35x slower in the serial builds (ReLU's backward with
    dx = dy, 262k float32 elements, 1014 against 33 us). Kernels that may
    run in place pass the one array for both (``_relu_forward(y, y)``): a
    loop that reads and writes through the same pointer needs no check."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


@overload(same_data, inline="always")
def _same_data_overload(a, b):
    return lambda a, b: a.ctypes.data == b.ctypes.data


def set_num_threads(n: int, blas: bool = True) -> None:
    """Set the thread count of fastnn's parallel kernels and, with ``blas``,
    of NumPy's BLAS (through threadpoolctl) to the same number.

    With ``blas`` (the default) this is a process-wide change that every
    library using NumPy's BLAS sees: it is the user's explicit choice.
    ``blas=False`` changes only fastnn's (numba's) threads.
    ``FASTNN_NUM_THREADS`` applies this at import. An ``n`` above numba's
    maximum (``NUMBA_NUM_THREADS``, the CPU count unless set) is capped to
    it, for BLAS too.
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(blas, (bool, np.bool_)):
        raise TypeError(f"blas must be True or False, got {blas!r}")
    global PARALLEL_MIN_WORK, STEP_PARALLEL_MIN_WORK
    n = min(int(n), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    PARALLEL_MIN_WORK = _parallel_min_work(n)
    STEP_PARALLEL_MIN_WORK = _step_parallel_min_work(n)
    if blas:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, user_api="blas")


def get_num_threads() -> int:
    return numba.get_num_threads()


def threading_info() -> dict:
    """Which threading layer and thread counts are in use (for reports);
    ``blas_note``: advice when NumPy's OpenBLAS runs kernels without AVX-512
    on a CPU that has it (``fastnn._blas.core_type_note``), else None."""
    from threadpoolctl import threadpool_info

    from ._blas import core_type_note

    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started (first parallel kernel not run yet)"
    blas = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    return {
        "numba_threading_layer": layer,
        "numba_num_threads": numba.get_num_threads(),
        "blas": [
            {k: d.get(k) for k in ("internal_api", "num_threads", "version", "threading_layer",
                                   "architecture")}
            for d in blas
        ],
        "blas_note": core_type_note(blas),
        "parallel_min_work": PARALLEL_MIN_WORK,
        "step_parallel_min_work": STEP_PARALLEL_MIN_WORK,
    }


if os.environ.get("FASTNN_NUM_THREADS"):
    set_num_threads(int(os.environ["FASTNN_NUM_THREADS"]))
