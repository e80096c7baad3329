"""Input checks, run in Python before any kernel.

Kernels do no bounds checking: a wrong shape or an out-of-range label inside
njit reads or writes memory it does not own. Every public entry point
therefore passes its arrays through these helpers first. Each helper has a
fast path for the common, already-correct case (a few attribute reads) and a
slow path that converts or raises with a message naming the argument.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def not_masked(name: str, a) -> None:
    """Refuse a masked array: the kernels would read its masked entries too
    (a masked-out label of 2**30 was read as an index)."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must be a plain numpy array, got a masked array: its masked entries "
            f"would be used as well; pass {name}.filled(value) or drop the masked rows"
        )


def float_array(name: str, a, ndim=None, dtype=None, min_rows: int = 1) -> np.ndarray:
    """``a`` as a C-contiguous float32/float64 ndarray, or a clear error.

    ndim: required number of dimensions (int), or a tuple of allowed ones.
    dtype: required dtype (e.g. the layer's), or None for either float dtype.
    min_rows: the first axis must have at least this many entries.
    """
    if (
        type(a) is np.ndarray
        and a.flags.c_contiguous
        and (a.dtype is dtype if dtype is not None else a.dtype in FLOAT_DTYPES)
        and (ndim is None or a.ndim == ndim)
        and a.ndim > 0
        and a.shape[0] >= min_rows
        and a.size > 0
    ):
        return a
    not_masked(name, a)
    if isinstance(a, np.ndarray):
        arr = a.view(np.ndarray) if type(a) is not np.ndarray else a
    elif isinstance(a, (list, tuple)) or np.isscalar(a):
        try:
            arr = np.asarray(a)
        except ValueError as exc:  # ragged nested lists
            raise ValueError(f"{name} must be a rectangular array: {exc}") from None
        if arr.dtype.kind in "iub" and dtype is not None:
            raise TypeError(
                f"{name} must be a float array; got a {type(a).__name__} of {arr.dtype} values"
            )
        if arr.dtype == np.float64 and dtype is not None:
            arr = arr.astype(dtype)
    else:
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if arr.dtype not in FLOAT_DTYPES:
        hint = " (float16 is not supported)" if arr.dtype == np.float16 else ""
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {arr.dtype}{hint}; "
            f"convert with {name}.astype(np.float32)"
        )
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {arr.dtype} but {np.dtype(dtype)} is expected here "
            f"(float32 and float64 are never mixed silently; convert with "
            f"{name}.astype(np.{np.dtype(dtype).name}))"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(f"{k}-D" for k in allowed)
            raise ValueError(f"{name} must be {want}, got {arr.ndim}-D array of shape {arr.shape}")
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array with at least one dimension, got a scalar")
    if arr.shape[0] < min_rows:
        raise ValueError(
            f"{name} must have at least {min_rows} row(s) along axis 0, got shape {arr.shape}"
            + (" (an empty batch)" if arr.shape[0] == 0 else "")
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return np.ascontiguousarray(arr)


def out_array(name: str, out, shape, dtype) -> np.ndarray:
    """Check a caller-supplied output buffer; it is written in place."""
    if type(out) is np.ndarray and out.shape == shape and out.dtype is dtype and out.flags.c_contiguous and out.flags.writeable:
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    not_masked(name, out)
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only; an output buffer must be writeable")
    return out.view(np.ndarray) if type(out) is not np.ndarray else out


def same_shape(name: str, a: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    if a.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {ref.shape}, got {a.shape}")


def labels_array(name: str, labels, n: int, num_classes: int) -> np.ndarray:
    """Integer class indices of shape (n,), each in [0, num_classes)."""
    not_masked(name, labels)
    if type(labels) is not np.ndarray and isinstance(labels, np.ndarray):
        labels = labels.view(np.ndarray)  # the range check below reads what the kernel reads
    if not isinstance(labels, np.ndarray):
        if isinstance(labels, (list, tuple)):
            labels = np.asarray(labels)
        else:
            raise TypeError(f"{name} must be a numpy array of class indices, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must hold integer class indices (or be a float (N, C) target array), "
            f"got dtype {labels.dtype}"
        )
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got {labels.shape}")
    lo, hi = labels.min(), labels.max()
    if lo < 0 or hi >= num_classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise ValueError(
            f"{name} must be class indices in [0, {num_classes}); "
            f"{name}[{bad}] = {int(labels[bad])}"
        )
    if labels.dtype != np.int64 or not labels.flags.c_contiguous:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    return labels


def targets_array(name: str, targets, shape, dtype, row_check=None) -> np.ndarray:
    """One-hot or soft targets: (N, C), non-negative, rows summing to 1.
    ``row_check(t)``: (each row's sum, each row's count of entries that are
    not finite and non-negative), computed in one pass (default: NumPy)."""
    t = float_array(name, targets, ndim=2, dtype=dtype)
    if t.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} to match the logits, got {t.shape}")
    if row_check is None:
        finite = np.isfinite(t).all() and not (t < 0).any()
        sums = t.sum(axis=1) if finite else None
    else:
        sums, bad = row_check(t)
        finite = not bad.any()
    if not finite:
        raise ValueError(f"{name} must be finite and non-negative (one-hot or probabilities)")
    tol = 1e-3 if t.dtype == np.float32 else 1e-8
    if np.abs(sums - 1).max() > tol:
        bad = int(np.argmax(np.abs(sums - 1)))
        raise ValueError(f"each row of {name} must sum to 1; row {bad} sums to {float(sums[bad]):.6g}")
    return t


def real(name: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """A finite real scalar within [lo, hi] (or open ends)."""
    if type(value) is float:  # the common case first: this runs on every op's call
        v = value
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    else:
        try:
            v = float(value)
        except OverflowError:  # an int beyond the float range
            raise ValueError(f"{name} must be finite, got an int of {len(str(abs(value)))} digits") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and (v > hi or (hi_open and v == hi)):
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{name} must be in {left}{lo_s}, {hi_s}{right}, got {v:g}")
    return v


def seeded_rng(name: str, seed) -> np.random.Generator:
    """``np.random.default_rng(seed)``, its errors naming the argument."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


def positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def float_dtype(name: str, dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt
