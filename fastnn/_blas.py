"""Find NumPy's own cblas_sgemm / cblas_dgemm, for kernels that multiply
matrices from inside numba (``fastnn.kernels._blas``).

NumPy links one BLAS (OpenBLAS in the PyPI wheels, MKL in some builds);
threadpoolctl names its file. The symbols looked up, in order:
``scipy_cblas_?gemm64_`` (NumPy >= 2 wheels, 64-bit integers),
``cblas_?gemm64_`` (NumPy 1.x wheels, 64-bit) and ``cblas_?gemm`` (MKL,
32-bit). Each candidate must reproduce ``np.matmul`` on a small product
(bit for bit: the same library) before it is used; anything else leaves
``FUNCTIONS`` None, and callers keep NumPy's matmul.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

_CANDIDATES = (("scipy_cblas_{}gemm64_", True), ("cblas_{}gemm64_", True), ("cblas_{}gemm", False))


def _blas_files() -> list:
    """BLAS libraries in this process, NumPy's first."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a dependency
        return []
    infos = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    infos.sort(key=lambda d: not os.path.realpath(d.get("filepath", "")).startswith(numpy_dir))
    return [(d.get("filepath"), d.get("internal_api")) for d in infos if d.get("filepath")]


def _self_test(sgemm: int, dgemm: int, wide: bool) -> bool:
    """C = A @ B.T through each function, called from ctypes with the
    integer width assumed, against np.matmul (a numba call here would cost
    a cache load, 0.3 s, at every process start)."""
    i = ctypes.c_int64 if wide else ctypes.c_int32
    rng = np.random.default_rng(0)
    for dt, real, fn in ((np.float32, ctypes.c_float, sgemm), (np.float64, ctypes.c_double, dgemm)):
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, i, i, i, real,
                                 ctypes.c_void_p, i, ctypes.c_void_p, i, real, ctypes.c_void_p, i)
        A = rng.standard_normal((7, 5)).astype(dt)
        B = rng.standard_normal((3, 5)).astype(dt)
        C = np.full((7, 3), np.nan, dt)
        proto(fn)(101, 111, 112, 7, 3, 5, 1.0, A.ctypes.data, 5, B.ctypes.data, 5, 0.0, C.ctypes.data, 3)
        if not np.array_equal(C, np.matmul(A, B.T)):
            return False
    return True


def _find():
    if os.environ.get("FASTNN_NUMBA_BLAS", "1") == "0":
        return None
    for path, api in _blas_files():
        if api not in ("openblas", "mkl"):
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, wide in _CANDIDATES:
            try:
                s = getattr(lib, pattern.format("s"))
                d = getattr(lib, pattern.format("d"))
            except AttributeError:
                continue
            addrs = (ctypes.cast(s, ctypes.c_void_p).value, ctypes.cast(d, ctypes.c_void_p).value)
            if _self_test(*addrs, wide):
                return addrs + (wide,)
    return None


_found = False
FUNCTIONS = None


def functions():
    """(sgemm address, dgemm address, wide) or None; looked up once."""
    global _found, FUNCTIONS
    if not _found:
        _found = True
        try:
            FUNCTIONS = _find()
        except Exception:  # noqa: BLE001 - any failure means: use np.matmul
            FUNCTIONS = None
    return FUNCTIONS


# OpenBLAS core types whose kernels use AVX-512 (NumPy's OpenBLAS build maps
# Cooperlake and SapphireRapids to SkylakeX), and the CPU flags SkylakeX's need.
_AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")
_SKYLAKEX_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def core_type_note(blas: list | None = None, cpu_flags: set | None = None) -> str | None:
    """A note when NumPy's OpenBLAS runs kernels without AVX-512 on a CPU
    that has it, else None. OpenBLAS picks its kernels from the CPU's
    identity at load; on the development machine (an AMD EPYC with AVX-512,
    a Firecracker guest) it chose its Haswell kernels, and
    ``OPENBLAS_CORETYPE=SkylakeX`` made the seed
    network's products 1.8x faster. fastnn does not set it: the variable
    must be in the environment before NumPy loads OpenBLAS, and it changes
    NumPy's products for the whole process. ``blas``: threadpoolctl's
    entries (default: this process's); ``cpu_flags``: the CPU's flags
    (default: /proc/cpuinfo)."""
    if blas is None:
        try:
            from threadpoolctl import threadpool_info
        except ImportError:  # pragma: no cover - a dependency
            return None
        blas = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if not all(f in flags for f in _SKYLAKEX_FLAGS):
        return None
    for entry in blas:
        arch = str(entry.get("architecture") or "")
        if entry.get("internal_api") == "openblas" and arch and arch.lower() not in _AVX512_CORES:
            return (f"OpenBLAS runs its {arch} kernels on a CPU with AVX-512: setting "
                    f"OPENBLAS_CORETYPE=SkylakeX before NumPy is imported may make its "
                    f"matrix products faster (it selects the kernels for the whole process)")
    return None
