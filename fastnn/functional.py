"""The validated, allocating front of every kernel, and backend dispatch.

Each function here checks its arguments (``_validate``), allocates the
outputs it was not given, and calls the kernel of the selected backend:
``"numba"`` (``fastnn.kernels``) or ``"numpy"`` (``fastnn.reference``).
The modules in ``fastnn.nn`` call these functions with their own buffers.

Backend selection, in order: the ``backend=`` argument, then the innermost
``with use_backend(...)``, then ``set_backend(...)`` (default ``"numba"``,
or the ``FASTNN_BACKEND`` environment variable).
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from . import _memory
from . import _validate as V
from ._config import same_data
from .kernels import activations as K_act
from .kernels import batchnorm as K_bn
from .kernels import dropout as K_drop
from .kernels import layernorm as K_ln
from .kernels import linear as K_lin
from .kernels import losses as K_loss
from .kernels import softmax_xent as K_xent
from .reference import activations as R_act
from .reference import batchnorm as R_bn
from .reference import dropout as R_drop
from .reference import layernorm as R_ln
from .reference import linear as R_lin
from .reference import losses as R_loss
from .reference import softmax_xent as R_xent

BACKENDS = ("numba", "numpy")
_default_backend = os.environ.get("FASTNN_BACKEND", "numba")
if _default_backend not in BACKENDS:
    raise ValueError(f"FASTNN_BACKEND must be one of {BACKENDS}, got {_default_backend!r}")
_local = threading.local()


def _check_backend(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Select the default backend for all modules: ``"numba"`` or ``"numpy"``."""
    global _default_backend
    _default_backend = _check_backend(name)


def get_backend() -> str:
    return getattr(_local, "backend", None) or _default_backend


@contextlib.contextmanager
def use_backend(name: str):
    """Run a block on another backend (this thread only)."""
    prev = getattr(_local, "backend", None)
    _local.backend = _check_backend(name)
    try:
        yield
    finally:
        _local.backend = prev


def _numba(backend) -> bool:
    if backend is None:
        backend = getattr(_local, "backend", None) or _default_backend
    elif backend not in BACKENDS:
        _check_backend(backend)
    return backend == "numba"


# ---------------------------------------------------------------- finite checks

class _FiniteFlag(threading.local):
    """Truthy when checks are on in this thread: the innermost
    ``with check_finite(...)`` of this thread, else ``set_check_finite``'s
    process-wide setting (a global flag would leak between threads)."""

    default = os.environ.get("FASTNN_CHECK_FINITE", "") not in ("", "0")
    override = None

    def __bool__(self):
        return self.default if self.override is None else self.override


_check_finite = _FiniteFlag()
_finite_lock = threading.Lock()
# Hot paths test this plain global first: True while checks may be on in
# any thread (the thread-local lookup costs ~1 us, 15 times a training step).
_finite_maybe = _FiniteFlag.default
_finite_blocks = 0


def _flag(enabled) -> bool:
    # bool("false") is True: a string would turn the checks on
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    return bool(enabled)


def set_check_finite(enabled: bool) -> None:
    """Opt-in debug mode: every op checks its inputs and outputs for NaN/Inf
    and raises ``FloatingPointError`` naming the op and the array."""
    global _finite_maybe
    _FiniteFlag.default = _flag(enabled)
    _finite_maybe = _FiniteFlag.default or _finite_blocks > 0


@contextlib.contextmanager
def check_finite(enabled: bool = True):
    """``set_check_finite`` for a block, in this thread only."""
    global _finite_maybe, _finite_blocks
    enabled = _flag(enabled)
    prev = _check_finite.override
    _check_finite.override = enabled
    with _finite_lock:
        _finite_blocks += 1
        _finite_maybe = True
    try:
        yield
    finally:
        _check_finite.override = prev
        with _finite_lock:
            _finite_blocks -= 1
            _finite_maybe = _FiniteFlag.default or _finite_blocks > 0


def _finite(op: str, role: str, **arrays) -> None:
    for name, a in arrays.items():
        if a is not None and not np.isfinite(a).all():
            raise FloatingPointError(
                f"{op} {role} a non-finite value in {name!r} "
                f"({int((~np.isfinite(a)).sum())} of {a.size} entries are NaN or Inf)"
            )


def _work(kernels, name, a):
    """``work=`` for kernel ``name``: a's size weighted by the kernel's cost
    per element (``COST`` in its module)."""
    return int(a.size * kernels.COST[name][a.dtype.itemsize > 4])


def _new(out, name, shape, dtype, apart=(), inputs=()):
    """A fresh output array, or the caller's ``out`` checked; ``apart``:
    (name, array) pairs it must not overlap, arrays the kernel still reads
    after it starts writing ``out`` (or other outputs). ``inputs``: (name,
    array) pairs of out's shape that the kernel reads element by element,
    each element before it writes the same element of ``out``: ``out`` may
    be one of them exactly (in place), but not overlap one otherwise (the
    kernel would read elements it has already overwritten)."""
    if out is None:
        return _memory.empty(shape, dtype)
    out = V.out_array(name, out, shape, dtype)
    for other_name, other in apart:
        if other is not None and np.may_share_memory(out, other):
            raise ValueError(f"{name} must not share memory with {other_name}: "
                             f"the kernel reads {other_name} after it writes {name}")
    for other_name, other in inputs:
        if other is not None and np.may_share_memory(out, other) and not _same_memory(out, other):
            raise ValueError(f"{name} must be {other_name} itself or not share memory with it: "
                             f"it overlaps part of {other_name}, whose elements the kernel "
                             f"would read after overwriting them")
    return out


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a and b are the same C-contiguous memory, element for element."""
    if a is b:  # the common case (``out=x``), without the ~1.6 us of the addresses
        return True
    return a.nbytes == b.nbytes and a.dtype == b.dtype and b.flags.c_contiguous and same_data(a, b)


# ---------------------------------------------------------------------- linear


def linear(x, W, b=None, *, out=None, backend=None):
    """y = x @ W + b. x: (N, D), W: (D, H), b: (H,) or None -> y: (N, H)."""
    W = V.float_array("W", W, ndim=2)
    x = V.float_array("x", x, ndim=2, dtype=W.dtype)
    if x.shape[1] != W.shape[0]:
        raise ValueError(
            f"x has {x.shape[1]} features (shape {x.shape}) but W expects {W.shape[0]} (shape {W.shape})"
        )
    if b is not None:
        b = V.float_array("b", b, ndim=1, dtype=W.dtype)
        if b.shape[0] != W.shape[1]:
            raise ValueError(f"b must have shape ({W.shape[1]},) to match W {W.shape}, got {b.shape}")
    y = _new(out, "out", (x.shape[0], W.shape[1]), W.dtype)
    if _finite_maybe and _check_finite:
        _finite("linear_forward", "received", x=x, W=W, b=b)
    (K_lin if _numba(backend) else R_lin).linear_forward(y, x, W, b)
    if _finite_maybe and _check_finite:
        _finite("linear_forward", "produced", y=y)
    return y


def linear_backward(dy, x, W, *, dW=None, db=None, need_dx=True, has_bias=True, backend=None):
    """Gradients of y = x @ W + b. Returns (dx, dW, db); dx is None when not needed.

    dW and db, when given, are overwritten in place.
    """
    W = V.float_array("W", W, ndim=2)
    x = V.float_array("x", x, ndim=2, dtype=W.dtype)
    dy = V.float_array("dy", dy, ndim=2, dtype=W.dtype)
    n, h = x.shape[0], W.shape[1]
    if x.shape[1] != W.shape[0]:
        raise ValueError(f"x has {x.shape[1]} features but W expects {W.shape[0]}")
    if dy.shape != (n, h):
        raise ValueError(f"dy must have shape {(n, h)} (the layer's output), got {dy.shape}")
    dW = _new(dW, "dW", W.shape, W.dtype, apart=(("W", W), ("x", x), ("dy", dy)))
    db = _new(db, "db", (h,), W.dtype, apart=(("W", W), ("x", x), ("dy", dy), ("dW", dW))) if has_bias else None
    dx = _memory.empty(x.shape, W.dtype) if need_dx else None
    if _finite_maybe and _check_finite:
        _finite("linear_backward", "received", dy=dy)
    (K_lin if _numba(backend) else R_lin).linear_backward(dx, dW, db, dy, x, W)
    if _finite_maybe and _check_finite:
        _finite("linear_backward", "produced", dx=dx, dW=dW, db=db)
    return dx, dW, db


# ----------------------------------------------------------------- activations

_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu")
# Backward of these takes the forward's output instead of its input.
SAVES_OUTPUT = frozenset({"sigmoid", "tanh"})


def _act_args(name, alpha):
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {name!r}")
    return (V.real("alpha", alpha),) if name == "leaky_relu" else ()


def activation(name, x, *, alpha=0.01, out=None, backend=None):
    """y = act(x), elementwise, any shape, dtype preserved."""
    extra = _act_args(name, alpha)
    x = V.float_array("x", x)
    y = _new(out, "out", x.shape, x.dtype, inputs=(("x", x),))
    if _finite_maybe and _check_finite:
        _finite(f"{name}_forward", "received", x=x)
    fwd = name + "_forward"
    if _numba(backend):
        getattr(K_act, fwd)(y.reshape(-1), x.reshape(-1), *extra, work=_work(K_act, fwd, x))
    else:
        getattr(R_act, fwd)(y.reshape(-1), x.reshape(-1), *extra)
    if _finite_maybe and _check_finite:
        _finite(fwd, "produced", y=y)
    return y


def activation_backward(name, dy, saved, *, alpha=0.01, out=None, backend=None):
    """dx for act; ``saved`` is the forward's input x, or its output y for
    sigmoid and tanh (``SAVES_OUTPUT``)."""
    extra = _act_args(name, alpha)
    saved_name = "y" if name in SAVES_OUTPUT else "x"
    saved = V.float_array(saved_name, saved)
    dy = V.float_array("dy", dy, dtype=saved.dtype)
    V.same_shape("dy", dy, "the forward's input", saved)
    dx = _new(out, "out", saved.shape, saved.dtype, inputs=(("dy", dy), (saved_name, saved)))
    if _finite_maybe and _check_finite:
        _finite(f"{name}_backward", "received", dy=dy)
    bwd = name + "_backward"
    if _numba(backend):
        getattr(K_act, bwd)(dx.reshape(-1), dy.reshape(-1), saved.reshape(-1), *extra,
                            work=_work(K_act, bwd, dy))
    else:
        getattr(R_act, bwd)(dx.reshape(-1), dy.reshape(-1), saved.reshape(-1), *extra)
    if _finite_maybe and _check_finite:
        _finite(bwd, "produced", dx=dx)
    return dx


def relu(x, **kw):
    return activation("relu", x, **kw)


def leaky_relu(x, alpha=0.01, **kw):
    return activation("leaky_relu", x, alpha=alpha, **kw)


def sigmoid(x, **kw):
    return activation("sigmoid", x, **kw)


def tanh(x, **kw):
    return activation("tanh", x, **kw)


def gelu(x, **kw):
    return activation("gelu", x, **kw)


def silu(x, **kw):
    return activation("silu", x, **kw)


# --------------------------------------------------------- softmax + x-entropy


def _xent_target(target, n, c, dtype):
    """The checked target: one-hot/soft targets (N, C) when 2-D, else labels
    (N,) (float labels get "integer class indices" rather than a shape error)."""
    if isinstance(target, np.ndarray) and target.ndim == 2 or (
            isinstance(target, (list, tuple)) and np.ndim(target) == 2):
        return V.targets_array("y", target, (n, c), dtype, row_check=_target_rows)
    return V.labels_array("y", target, n, c)


def _target_rows(t):
    """(row sums, bad entries per row) of (N, C) targets, one parallel pass."""
    sums, bad = np.empty(len(t), np.float64), np.empty(len(t), np.int64)
    K_xent.softmax_xent_target_rows(sums, bad, t, work=_work(K_xent, "softmax_xent_target_rows", t))
    return sums, bad


def _xent_run(stage, outputs, inputs, target, backend):
    """Run ``softmax_xent_<stage>_labels`` or ``_targets`` (by the target's
    ndim) on ``(*outputs, *inputs, target)``; work is sized by inputs[0]."""
    name = f"softmax_xent_{stage}_{'targets' if target.ndim == 2 else 'labels'}"
    if _numba(backend):
        getattr(K_xent, name)(*outputs, *inputs, target, work=_work(K_xent, name, inputs[0]))
    else:
        getattr(R_xent, name)(*outputs, *inputs, target)


def _xent_mean(stage, outputs, logits, target, backend, losses=None):
    """The forward kernel of ``stage`` on checked arrays; returns the mean loss
    of the per-row ``losses`` (default: the last of ``outputs``)."""
    if _finite_maybe and _check_finite:
        _finite("softmax_xent_forward", "received", logits=logits)
    _xent_run(stage, outputs, (logits,), target, backend)
    losses = outputs[-1] if losses is None else losses
    loss = float(losses.sum(dtype=np.float64)) / logits.shape[0]  # .mean() costs 3 us more
    if _finite_maybe and _check_finite:
        _finite("softmax_xent_forward", "produced", loss=np.asarray(loss))
    return loss


def softmax_xent(logits, target, *, probs=None, losses=None, backend=None):
    """Mean cross-entropy of softmax(logits) against integer labels (N,) or
    one-hot/soft targets (N, C). Returns (loss, probs, target) where target
    is the validated labels/targets array to pass to the backward."""
    logits = V.float_array("logits", logits, ndim=2)
    n, c = logits.shape
    target = _xent_target(target, n, c, logits.dtype)
    probs = _new(probs, "probs", (n, c), logits.dtype, apart=(("logits", logits), ("target", target)))
    losses = _new(losses, "losses", (n,), logits.dtype,
                  apart=(("logits", logits), ("target", target), ("probs", probs)))
    return _xent_mean("forward", (probs, losses), logits, target, backend), probs, target


def softmax_xent_backward(probs, target, *, out=None, backend=None):
    """dlogits = (probs - onehot(target)) / N; ``target`` as returned by softmax_xent."""
    probs = V.float_array("probs", probs, ndim=2)
    n, c = probs.shape
    target = _xent_target(target, n, c, probs.dtype)
    d = _new(out, "out", (n, c), probs.dtype, inputs=(("probs", probs), ("target", target)))
    if _finite_maybe and _check_finite:
        _finite("softmax_xent_backward", "received", probs=probs)
    _xent_run("backward", (d,), (probs,), target, backend)
    return d


def softmax_xent_loss(logits, target, *, backend=None):
    """``softmax_xent`` without writing the probabilities: returns
    (loss, stats, target), ``stats = (rowmax, rowsum)`` (N,) arrays, the
    row's max and sum of exp(logits - max). ``softmax_xent_grad`` recomputes
    the probabilities from them and the same logits: one pass over (N, C)
    less than ``softmax_xent`` + ``softmax_xent_backward``."""
    loss, _, stats, target = _softmax_xent_loss(logits, target, backend)
    return loss, stats, target


def _softmax_xent_loss(logits, target, backend):
    """softmax_xent_loss, also returning the checked logits (the module keeps them)."""
    logits = V.float_array("logits", logits, ndim=2)
    n, c = logits.shape
    target = _xent_target(target, n, c, logits.dtype)
    rowmax, rowsum, losses = (np.empty(n, logits.dtype) for _ in range(3))
    loss = _xent_mean("loss", (rowmax, rowsum, losses), logits, target, backend)
    return loss, logits, (rowmax, rowsum), target


def softmax_xent_loss_grad(logits, target, *, out=None, backend=None):
    """``softmax_xent_loss`` and ``softmax_xent_grad`` in one pass over the
    logits: returns (loss, dlogits, stats, target). Each row's exps are
    written into dlogits while the row is in cache: one exp per element
    instead of two and one read of the logits instead of two, for a forward
    that a backward will follow."""
    loss, _, stats, target, d = _softmax_xent_loss_grad(logits, target, backend, out)
    return loss, d, stats, target


def _softmax_xent_loss_grad(logits, target, backend, out=None, keep=None):
    """softmax_xent_loss_grad, also returning the checked logits (the module
    keeps them): (loss, logits, stats, kept, d). ``keep(target)``, given the
    checked labels or targets, returns the array to copy them into, returned
    as ``kept`` (the targets themselves, or no ``keep``: no copy); (N, C)
    targets are copied by the kernel's own pass."""
    logits = V.float_array("logits", logits, ndim=2)
    n, c = logits.shape
    target = _xent_target(target, n, c, logits.dtype)
    d = _new(out, "out", (n, c), logits.dtype, apart=(("logits", logits), ("target", target)))
    rowmax, rowsum, losses = (np.empty(n, logits.dtype) for _ in range(3))
    kept = target if keep is None else keep(target)
    outputs = (d, rowmax, rowsum, losses)
    if target.ndim == 2:
        outputs += (kept,)
    elif kept is not target:
        np.copyto(kept, target)  # (N,) labels
    loss = _xent_mean("loss_grad", outputs, logits, target, backend, losses)
    return loss, logits, (rowmax, rowsum), kept, d


def softmax_xent_grad(logits, stats, target, *, out=None, backend=None):
    """dlogits = (softmax(logits) - onehot(target)) / N from the logits and
    the ``stats`` and ``target`` that ``softmax_xent_loss`` returned for them."""
    logits = V.float_array("logits", logits, ndim=2)
    n, c = logits.shape
    if not (isinstance(stats, tuple) and len(stats) == 2):
        raise TypeError(f"stats must be the (rowmax, rowsum) pair softmax_xent_loss returned, got {type(stats).__name__}")
    rowmax = V.float_array("rowmax", stats[0], ndim=1, dtype=logits.dtype)
    rowsum = V.float_array("rowsum", stats[1], ndim=1, dtype=logits.dtype)
    if rowmax.shape != (n,) or rowsum.shape != (n,):
        raise ValueError(f"rowmax and rowsum must have {n} entries (one per row of logits), "
                         f"got {rowmax.size} and {rowsum.size}")
    target = _xent_target(target, n, c, logits.dtype)
    d = _new(out, "out", (n, c), logits.dtype, apart=(("rowmax", rowmax), ("rowsum", rowsum)),
             inputs=(("logits", logits), ("target", target)))
    _xent_run("grad", (d,), (logits, rowmax, rowsum), target, backend)
    return d


# ------------------------------------------------------------ pointwise losses

POINTWISE_LOSSES = ("mse", "l1", "huber", "bce_logits")
REDUCTIONS = ("mean", "sum")


def _loss_args(kind, pred, target, reduction, delta, pos_weight):
    """(pred, target, pos_weight) as (N, C) arrays of pred's dtype, checked."""
    if kind not in POINTWISE_LOSSES:
        raise ValueError(f"loss must be one of {POINTWISE_LOSSES}, got {kind!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    pred = V.float_array("pred", pred, ndim=(1, 2))
    if isinstance(target, np.ndarray) and target.dtype.kind in "iub" and target.dtype != pred.dtype:
        target = target.astype(pred.dtype)
    target = V.float_array("target", target, dtype=pred.dtype)
    if target.shape != pred.shape:
        hint = (" (reshape the targets with y.reshape(-1, 1), or they would broadcast)"
                if target.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1 else "")
        raise ValueError(f"target must have the shape of the predictions {pred.shape}, "
                         f"got {target.shape}{hint}")
    pred2, target2 = pred.reshape(len(pred), -1), target.reshape(len(target), -1)
    c = pred2.shape[1]
    if kind == "huber":
        delta = V.real("delta", delta, lo=0, lo_open=True)
    if kind == "bce_logits":
        if pos_weight is None:
            pos_weight = np.ones(c, pred.dtype)
        else:
            pw = pos_weight if isinstance(pos_weight, np.ndarray) else np.asarray(pos_weight)
            if pw.dtype.kind not in "iuf":
                raise TypeError(f"pos_weight must be real weights (one per output column), got "
                                f"{type(pos_weight).__name__} of dtype {pw.dtype}")
            pos_weight = V.float_array("pos_weight", pw.astype(pred.dtype), ndim=1)
            if pos_weight.shape != (c,) or not np.isfinite(pos_weight).all() or (pos_weight < 0).any():
                raise ValueError(f"pos_weight must be {c} finite non-negative weights (one per "
                                 f"output column), got shape {pos_weight.shape}")
    return pred2, target2, delta, pos_weight


def pointwise_loss(kind, pred, target, *, reduction="mean", delta=1.0, pos_weight=None, backend=None):
    """``kind`` in ``POINTWISE_LOSSES`` of predictions (logits for
    ``"bce_logits"``) against same-shaped targets, reduced by ``"mean"`` (over
    all elements, as PyTorch) or ``"sum"``. Returns (loss, pred2, target2,
    delta, pos_weight): the checked (N, C) arrays to pass to the backward."""
    loss, _, args = _pointwise_loss(kind, pred, target, reduction, delta, pos_weight, backend, grad=False)
    return (loss,) + args


def _pointwise_loss_grad(kind, pred, target, reduction, delta, pos_weight, backend, keep=None):
    """``pointwise_loss`` that also returns d(loss)/d(pred) of the checked
    (N, C) predictions, computed in the same pass: (loss, d, pred2, kept,
    delta, pos_weight). ``keep(target2)``, given the checked (N, C) targets,
    returns the array that the same pass copies them into, returned as
    ``kept`` (target2 itself, or no ``keep``: no copy, kept is target2)."""
    loss, d, args = _pointwise_loss(kind, pred, target, reduction, delta, pos_weight, backend, grad=True,
                                    keep=keep)
    return (loss, d) + args


def _pointwise_loss(kind, pred, target, reduction, delta, pos_weight, backend, grad, keep=None):
    """(loss, d or None, checked args); with ``grad`` the gradient too (and
    the checked targets in args replaced by their copy, see
    ``_pointwise_loss_grad``), from ``<kind>_forward_backward`` in the same pass."""
    args = _loss_args(kind, pred, target, reduction, delta, pos_weight)
    pred2, target2, delta, pos_weight = args
    losses = np.empty(len(pred2), np.float64)
    mod = K_loss if _numba(backend) else R_loss
    extra = (delta,) if kind == "huber" else (pos_weight,) if kind == "bce_logits" else ()
    if _finite_maybe and _check_finite:
        _finite(f"{kind}_forward", "received", pred=pred2, target=target2)
    d = None
    if grad:
        d = _memory.empty(pred2.shape, pred2.dtype)
        kept = target2 if keep is None else keep(target2)
        fn, outputs = getattr(mod, kind + "_forward_backward"), (d, losses, kept)
        extra += (1.0 / pred2.size if reduction == "mean" else 1.0,)
        args = (pred2, kept, delta, pos_weight)
    else:
        fn, outputs = getattr(mod, kind + "_forward"), (losses,)
    if mod is K_loss:
        fn(*outputs, pred2, target2, *extra, work=pred2.size)
    else:
        fn(*outputs, pred2, target2, *extra)
    loss = float(losses.sum())
    if reduction == "mean":
        loss /= pred2.size
    return loss, d, args


def _pointwise_backward(kind, pred2, target2, delta, pos_weight, scale, d, backend):
    """The backward on arrays already checked by ``pointwise_loss``."""
    mod = K_loss if _numba(backend) else R_loss
    extra = (delta,) if kind == "huber" else (pos_weight,) if kind == "bce_logits" else ()
    bwd = getattr(mod, kind + "_backward")
    if mod is K_loss:
        bwd(d, pred2, target2, *extra, scale, work=pred2.size)
    else:
        bwd(d, pred2, target2, *extra, scale)
    return d


def pointwise_loss_backward(kind, pred, target, *, reduction="mean", delta=1.0, pos_weight=None,
                            out=None, backend=None):
    """d(loss)/d(pred) for ``pointwise_loss``: an array of pred's shape."""
    pred2, target2, delta, pos_weight = _loss_args(kind, pred, target, reduction, delta, pos_weight)
    scale = 1.0 / pred2.size if reduction == "mean" else 1.0
    d = _new(out, "out", np.shape(pred), pred2.dtype, apart=(("pos_weight", pos_weight),),
             inputs=(("pred", pred2), ("target", target2)))
    _pointwise_backward(kind, pred2, target2, delta, pos_weight, scale,
                        d.reshape(pred2.shape), backend)
    return d


def mse_loss(pred, target, *, reduction="mean", backend=None) -> float:
    return pointwise_loss("mse", pred, target, reduction=reduction, backend=backend)[0]


def l1_loss(pred, target, *, reduction="mean", backend=None) -> float:
    return pointwise_loss("l1", pred, target, reduction=reduction, backend=backend)[0]


def huber_loss(pred, target, *, delta=1.0, reduction="mean", backend=None) -> float:
    return pointwise_loss("huber", pred, target, reduction=reduction, delta=delta, backend=backend)[0]


def bce_with_logits(logits, target, *, pos_weight=None, reduction="mean", backend=None) -> float:
    return pointwise_loss("bce_logits", logits, target, reduction=reduction, pos_weight=pos_weight,
                          backend=backend)[0]


# ------------------------------------------------------------------- batchnorm


def _norm_params(x, gamma, beta, eps, d):
    gamma = V.float_array("gamma", gamma, ndim=1, dtype=x.dtype)
    beta = V.float_array("beta", beta, ndim=1, dtype=x.dtype)
    if gamma.shape[0] != d or beta.shape[0] != d:
        raise ValueError(f"gamma and beta must have shape ({d},) to match x's last axis, got {gamma.shape} and {beta.shape}")
    eps = V.real("eps", eps, lo=0, lo_open=True)
    return gamma, beta, eps


def batchnorm(x, gamma, beta, *, eps=1e-5, training=True, running_mean=None, running_var=None,
              momentum=0.1, out=None, backend=None):
    """Batch normalisation of x: (N, D) over axis 0.

    training: normalise with batch statistics (N >= 2) and, when running_mean
    and running_var are given, update them in place as in the seed:
    running = (1 - momentum) * running + momentum * batch (biased variance).
    eval: normalise with running_mean and running_var.
    Returns (y, mean, rstd); mean and rstd are None in eval mode.
    """
    x = V.float_array("x", x, ndim=2)
    n, d = x.shape
    gamma, beta, eps = _norm_params(x, gamma, beta, eps, d)
    momentum = V.real("momentum", momentum, lo=0, hi=1)
    if training:  # updated in place (a subclass through a plain view of its memory)
        if running_mean is not None:
            running_mean = V.out_array("running_mean", running_mean, (d,), x.dtype)
        if running_var is not None:
            running_var = V.out_array("running_var", running_var, (d,), x.dtype)
    else:  # only read: read-only or strided arrays are fine
        if running_mean is None or running_var is None:
            raise ValueError("eval mode needs running_mean and running_var")
        running_mean = V.float_array("running_mean", running_mean, ndim=1, dtype=x.dtype)
        running_var = V.float_array("running_var", running_var, ndim=1, dtype=x.dtype)
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            if r.shape != (d,):
                raise ValueError(f"{name} must have shape ({d},), got {r.shape}")
    numba_ = _numba(backend)
    y = _new(out, "out", (n, d), x.dtype,
             apart=(("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)), inputs=(("x", x),))
    if _finite_maybe and _check_finite:
        _finite("batchnorm_forward", "received", x=x)
    if not training:
        if numba_:
            K_bn.batchnorm_forward_eval(y, x, running_mean, running_var, gamma, beta, eps,
                                        work=_work(K_bn, "batchnorm_forward_eval", x))
        else:
            R_bn.batchnorm_forward_eval(y, x, running_mean, running_var, gamma, beta, eps)
        mean = rstd = None
    else:
        if n < 2:
            raise ValueError(
                f"batchnorm in training mode needs more than 1 sample per batch to compute a "
                f"variance, got x of shape {x.shape} (use eval mode for single samples)"
            )
        mean = np.empty(d, x.dtype)
        var = np.empty(d, x.dtype)
        rstd = np.empty(d, x.dtype)
        if numba_:
            K_bn.batchnorm_forward(y, mean, var, rstd, x, gamma, beta, eps,
                                   work=_work(K_bn, "batchnorm_forward", x))
        else:
            R_bn.batchnorm_forward(y, mean, var, rstd, x, gamma, beta, eps)
        for running, batch in ((running_mean, mean), (running_var, var)):
            if running is None:
                continue
            if numba_:
                K_bn.blend_running(running, batch, momentum, work=_work(K_bn, "blend_running", batch))
            else:
                R_bn.blend_running(running, batch, momentum)
    if _finite_maybe and _check_finite:
        _finite("batchnorm_forward", "produced", y=y)
    return y, mean, rstd


def batchnorm_backward(dy, x, mean, rstd, gamma, *, dgamma=None, dbeta=None, backend=None):
    """Returns (dx, dgamma, dbeta); dgamma/dbeta, when given, are overwritten."""
    x = V.float_array("x", x, ndim=2)
    n, d = x.shape
    dy = V.float_array("dy", dy, ndim=2, dtype=x.dtype)
    V.same_shape("dy", dy, "x", x)
    mean = V.float_array("mean", mean, ndim=1, dtype=x.dtype)
    rstd = V.float_array("rstd", rstd, ndim=1, dtype=x.dtype)
    gamma = V.float_array("gamma", gamma, ndim=1, dtype=x.dtype)
    for name, a in (("mean", mean), ("rstd", rstd), ("gamma", gamma)):
        if a.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},), got {a.shape}")
    reads = (("gamma", gamma), ("dy", dy), ("x", x), ("mean", mean), ("rstd", rstd))
    dgamma = _new(dgamma, "dgamma", (d,), x.dtype, apart=reads)
    dbeta = _new(dbeta, "dbeta", (d,), x.dtype, apart=reads + (("dgamma", dgamma),))
    dx = _memory.empty(x.shape, x.dtype)
    if _finite_maybe and _check_finite:
        _finite("batchnorm_backward", "received", dy=dy)
    if _numba(backend):
        K_bn.batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma,
                                work=_work(K_bn, "batchnorm_backward", x))
    else:
        R_bn.batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma)
    if _finite_maybe and _check_finite:
        _finite("batchnorm_backward", "produced", dx=dx)
    return dx, dgamma, dbeta


# ------------------------------------------------------------------- layernorm


def layernorm(x, gamma, beta, *, eps=1e-5, out=None, backend=None):
    """Layer normalisation over the last axis of x (any ndim >= 1).
    Returns (y, mean, rstd) with mean, rstd of shape x.shape[:-1]."""
    x = V.float_array("x", x)
    d = x.shape[-1]
    gamma, beta, eps = _norm_params(x, gamma, beta, eps, d)
    x2 = x.reshape(-1, d)
    m = x2.shape[0]
    y = _new(out, "out", x.shape, x.dtype, apart=(("gamma", gamma), ("beta", beta)), inputs=(("x", x),))
    mean = np.empty(m, x.dtype)
    rstd = np.empty(m, x.dtype)
    if _finite_maybe and _check_finite:
        _finite("layernorm_forward", "received", x=x)
    if _numba(backend):
        K_ln.layernorm_forward(y.reshape(-1, d), mean, rstd, x2, gamma, beta, eps,
                             work=_work(K_ln, "layernorm_forward", x))
    else:
        R_ln.layernorm_forward(y.reshape(-1, d), mean, rstd, x2, gamma, beta, eps)
    if _finite_maybe and _check_finite:
        _finite("layernorm_forward", "produced", y=y)
    return y, mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layernorm_backward(dy, x, mean, rstd, gamma, *, dgamma=None, dbeta=None, backend=None):
    """Returns (dx, dgamma, dbeta); dgamma/dbeta, when given, are overwritten."""
    x = V.float_array("x", x)
    d = x.shape[-1]
    dy = V.float_array("dy", dy, dtype=x.dtype)
    V.same_shape("dy", dy, "x", x)
    gamma = V.float_array("gamma", gamma, ndim=1, dtype=x.dtype)
    if gamma.shape != (d,):
        raise ValueError(f"gamma must have shape ({d},), got {gamma.shape}")
    m = x.size // d
    if x.ndim == 1:  # the forward of a 1-D x returns 0-d statistics
        mean, rstd = (np.reshape(a, 1) if isinstance(a, np.ndarray) and a.ndim == 0 else a
                      for a in (mean, rstd))
    mean = V.float_array("mean", mean, dtype=x.dtype).reshape(-1)
    rstd = V.float_array("rstd", rstd, dtype=x.dtype).reshape(-1)
    if mean.shape != (m,) or rstd.shape != (m,):
        raise ValueError(f"mean and rstd must have {m} entries (one per row of x), got {mean.size} and {rstd.size}")
    reads = (("gamma", gamma), ("dy", dy), ("x", x), ("mean", mean), ("rstd", rstd))
    dgamma = _new(dgamma, "dgamma", (d,), x.dtype, apart=reads)
    dbeta = _new(dbeta, "dbeta", (d,), x.dtype, apart=reads + (("dgamma", dgamma),))
    dx = _memory.empty(x.shape, x.dtype)
    args = (dx.reshape(-1, d), dgamma, dbeta, dy.reshape(-1, d), x.reshape(-1, d), mean, rstd, gamma)
    if _finite_maybe and _check_finite:
        _finite("layernorm_backward", "received", dy=dy)
    if _numba(backend):
        K_ln.layernorm_backward(*args, work=_work(K_ln, "layernorm_backward", x))
    else:
        R_ln.layernorm_backward(*args)
    if _finite_maybe and _check_finite:
        _finite("layernorm_backward", "produced", dx=dx)
    return dx, dgamma, dbeta


# --------------------------------------------------------------------- dropout


def _dropout_key(seed, step, row_offset, row):
    """(seed, step, flat offset) checked: ints, seed and step modulo 2**64;
    ``row``: the elements per row (the first axis)."""
    for name, v in (("seed", seed), ("step", step)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if isinstance(row_offset, (bool, np.bool_)) or not isinstance(row_offset, (int, np.integer)):
        raise TypeError(f"row_offset must be an int, got {type(row_offset).__name__}")
    if row_offset < 0:
        raise ValueError(f"row_offset must be non-negative, got {row_offset}")
    if int(row_offset) * row >= 2**63:
        raise ValueError(f"row_offset is too large: row_offset * the row's size must be below 2**63, "
                         f"got {row_offset} rows of {row}")
    # any int: taken modulo 2**64, as nn.Dropout takes its seed
    return np.uint64(int(seed) % 2**64), np.uint64(int(step) % 2**64), int(row_offset) * row


def dropout(x, p, *, seed, step, training=True, out=None, mask=None, backend=None, row_offset=0):
    """Inverted dropout: returns (y, mask). The mask (uint8, x's shape) depends
    only on (seed, step) and the element's index. In eval mode, or with
    p == 0, y is x itself and mask is None. ``row_offset``: x holds rows
    ``row_offset..`` of a larger batch, and gets those rows' masks.
    ``dropout_by_key`` does the same without storing the mask."""
    p = V.real("p", p, lo=0, hi=1, hi_open=True)
    x = V.float_array("x", x)
    seed, step, offset = _dropout_key(seed, step, row_offset, x.size // x.shape[0])
    if _finite_maybe and _check_finite:
        _finite("dropout_forward", "received", x=x)
    if not training or p == 0.0:
        return x, None
    y = _new(out, "out", x.shape, x.dtype, inputs=(("x", x),))
    mask = _new(mask, "mask", x.shape, np.dtype(np.uint8), apart=(("x", x), ("out", y)))
    args = (y.reshape(-1), mask.reshape(-1), x.reshape(-1), seed, step,
            K_drop.dropout_threshold(p), 1.0 / (1.0 - p), offset)
    if _numba(backend):
        K_drop.dropout_forward(*args, work=_work(K_drop, "dropout_forward", x))
    else:
        R_drop.dropout_forward(*args)
    return y, mask


def dropout_by_key(x, p, *, seed, step, row_offset=0, out=None, backend=None, name="x"):
    """``x * mask / (1 - p)`` with the mask of ``dropout(..., seed=seed,
    step=step, row_offset=row_offset)`` computed again rather than stored.

    The forward's output is ``dropout_by_key(x, ...)`` and its input gradient
    ``dropout_by_key(dy, ...)`` with the same key: no mask is written or read
    (``nn.Dropout`` trains this way). Bit for bit the mask path's outputs.
    ``name``: what to call x in error messages (``"dy"`` for a backward).
    """
    p = V.real("p", p, lo=0, hi=1, hi_open=True)
    x = V.float_array(name, x)
    seed, step, offset = _dropout_key(seed, step, row_offset, x.size // x.shape[0])
    if _finite_maybe and _check_finite:
        _finite("dropout_by_key", "received", **{name: x})
    if p == 0.0:
        return x
    y = _new(out, "out", x.shape, x.dtype, inputs=((name, x),))
    args = (y.reshape(-1), x.reshape(-1), seed, step, K_drop.dropout_threshold(p), 1.0 / (1.0 - p), offset)
    if _numba(backend):
        K_drop.dropout_by_key(*args, work=_work(K_drop, "dropout_by_key", x))
    else:
        R_drop.dropout_by_key(*args)
    return y


def dropout_mask(shape, p, *, seed, step, row_offset=0):
    """The uint8 mask (1 = kept) that ``dropout`` draws for an input of
    ``shape`` with this (seed, step, row_offset); None for p == 0."""
    p = V.real("p", p, lo=0, hi=1, hi_open=True)
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if (not isinstance(shape, tuple) or not shape
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    seed, step, offset = _dropout_key(seed, step, row_offset, int(np.prod(shape[1:], dtype=np.int64)))
    if p == 0.0:
        return None
    mask = np.empty(shape, np.uint8)
    K_drop.kept_mask(mask.reshape(-1), seed, step, K_drop.dropout_threshold(p), offset,
                     work=_work(K_drop, "kept_mask", mask))
    return mask


def dropout_backward(dy, mask, p, *, out=None, backend=None):
    """dx = dy * mask / (1 - p); mask as returned by dropout (None: identity)."""
    p = V.real("p", p, lo=0, hi=1, hi_open=True)
    dy = V.float_array("dy", dy)
    if _finite_maybe and _check_finite:
        _finite("dropout_backward", "received", dy=dy)
    if mask is None:
        return dy
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
        raise TypeError("mask must be the uint8 mask returned by dropout")
    if mask.shape != dy.shape:
        raise ValueError(f"dy must have the shape of the dropout mask {mask.shape} (the forward's input), got {dy.shape}")
    mask = np.ascontiguousarray(mask)
    dx = _new(out, "out", dy.shape, dy.dtype, apart=(("mask", mask),), inputs=(("dy", dy),))
    args = (dx.reshape(-1), dy.reshape(-1), mask.reshape(-1), 1.0 / (1.0 - p))
    if _numba(backend):
        K_drop.dropout_backward(*args, work=_work(K_drop, "dropout_backward", dy))
    else:
        R_drop.dropout_backward(*args)
    return dx
