"""Training loops, evaluation, and the seed's debugging checklist as functions.

* :func:`train` is the seed's loop, as written there: it calls
  ``model.forward``, ``model.compute_loss``, ``model.backward()`` and
  ``model.update(lr)``, which ``nn.Sequential`` provides (plain SGD, the
  loss given as ``Sequential(..., loss=...)``, default SoftmaxCrossEntropy).
  It shuffles with NumPy's global generator (``np.random.seed``), as the seed.
* :func:`fit` is the fuller loop: any optimizer, validation, early stopping,
  progress bar, reproducible shuffling and resumable epochs.
* :func:`evaluate` and :func:`predict` run in eval mode in batches.
* :func:`overfit_single_batch` and :func:`gradcheck` are the seed's
  "Can't overfit a single batch?" check and a finite-difference check.

Reproducibility: ``fastnn.manual_seed(s)`` before building the model fixes
the initial weights and the Dropout seeds; ``fit(seed=k)`` fixes the order
of the batches (epoch ``e`` is shuffled by a generator seeded with
``(k, e)``, so a run resumed at ``initial_epoch=e`` sees the same batches).
With the same thread count the numba backend then gives bit-identical
weights. To resume in another process, save with ``fastnn.save(path,
model, optimizer, epoch=e, seed=k)`` and continue with
``fit(..., seed=k, initial_epoch=e)`` after ``fastnn.load``.
"""

from __future__ import annotations

import copy
import math
import numbers
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _step
from . import _validate as V
from . import callbacks as _cb
from . import distributed as _distributed
from . import functional as F
from . import init as _init
from . import lr_scheduler as _lrs
from . import metrics as _metrics
from . import nn
from .regularization import clip_grad_norm as _clip_grad_norm

__all__ = [
    "train", "fit", "evaluate", "predict", "predict_proba", "History", "EarlyStopping",
    "NonFiniteLossError", "overfit_single_batch", "gradcheck",
]

_REMEDIES = (
    "Remedies from the debugging checklist: lower the learning rate (e.g. 10x), add gradient "
    "clipping (fit(clip_grad_norm=1.0), or optim.clip_grad_norm / clip_grad_value before "
    "optimizer.step()), and check the inputs for NaN/Inf; fastnn.set_check_finite(True) "
    "names the first op that produces a non-finite value."
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf. ``epoch`` (from 1), ``step``
    (batch within the epoch, from 1) and ``loss`` say where."""

    def __init__(self, loss, epoch, step, unchanged=False):
        self.loss, self.epoch, self.step = loss, epoch, step
        kept = (" That step changed nothing: the weights, the optimizer's state and BatchNorm's "
                "running statistics are as before it." if unchanged else "")
        super().__init__(f"the training loss became {loss} at epoch {epoch}, step {step}; "
                         f"training stopped.{kept} {_REMEDIES}")


# ------------------------------------------------------------------ helpers


def _count(name, value, *, positive=True) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < (1 if positive else 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}, got {value}")
    return value


def _check_model(model, what="model"):
    for attr in ("forward", "backward", "parameters", "train"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"{what} must be a fastnn Module (e.g. nn.Sequential), "
                            f"got {type(model).__name__} without .{attr}()")


def _model_dtype(model):
    params = model.parameters()
    return params[0].dtype if params else None


def _input_ndim(model):
    """2 where the model's first layer takes (N, features) only, else None (any)."""
    while isinstance(model, nn.Sequential) and model.layers:
        model = model.layers[0]
    return 2 if isinstance(model, (nn.Linear, nn.BatchNorm)) else None


def _data(X, y, model, what="X", y_name="y"):
    """X as a C-contiguous float array of the model's dtype; y as labels or targets."""
    # X's ndim checked here: a later error would describe a one-row probe (_output_width)
    X = V.float_array(what, X, ndim=_input_ndim(model), dtype=_model_dtype(model))
    V.not_masked(y_name, y)
    if not isinstance(y, np.ndarray):
        if isinstance(y, (list, tuple)):
            y = np.asarray(y)
        else:
            raise TypeError(f"{y_name} must be a numpy array, got {type(y).__name__}")
    if y.ndim not in (1, 2):
        raise ValueError(f"{y_name} must be class indices (N,) or targets (N, C), got shape {y.shape}")
    if y.dtype.kind not in "iuf":
        raise TypeError(f"{y_name} must hold integer class indices or float targets, got dtype {y.dtype}")
    if len(X) != len(y):
        raise ValueError(f"{what} and {y_name} must have the same length, got {len(X)} and {len(y)}")
    if y.dtype.kind == "f":
        y = np.ascontiguousarray(y, dtype=X.dtype)
    elif y.dtype != np.int64 or not y.flags.c_contiguous:
        big = y > np.iinfo(np.int64).max if y.dtype == np.uint64 else None
        if big is not None and big.any():  # would wrap negative in int64: report the value given
            i = _bad_row(big)
            raise ValueError(f"{y_name} holds {int(y[i].max())} at dataset row {i}, not a class index "
                             f"(too large for int64)")
        y = np.ascontiguousarray(y, dtype=np.int64)
    return X, y


def _backward_kwargs(model):
    """Skip the first layer's input gradient where the model allows it (not
    for a subclass with a backward of its own: its signature is its own)."""
    if isinstance(model, nn.Sequential) and not nn.overrides(model, nn.Sequential):
        return {"need_input_grad": False}
    if isinstance(model, nn.Linear) and not nn.overrides(model, nn.Linear):
        return {"need_dx": False}
    return {}


class _mode:
    """Context: the model in train/eval mode, the previous mode restored after."""

    def __init__(self, model, training):
        self.model, self.training = model, training

    def __enter__(self):
        self.prev = bool(getattr(self.model, "training", True))
        self.model.train(self.training)
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.prev)


# -------------------------------------------------------------- the seed's loop


def train(model, X_train, y_train, epochs=10, lr=0.01, batch_size=64):
    """The seed's basic training loop: shuffle each epoch (``np.random``),
    mini-batches, ``model.update(lr)``; prints ``Epoch k: Loss = ...`` and
    returns the per-epoch mean losses.

    ``model`` needs ``forward``, ``compute_loss(output, y)``, ``backward()``
    and ``update(lr)``: an ``nn.Sequential`` has them. A NaN/Inf loss raises
    :class:`NonFiniteLossError`.
    """
    for attr in ("forward", "compute_loss", "backward", "update"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"model needs .{attr}() for the seed's loop (an nn.Sequential has it); "
                            f"got {type(model).__name__}. For other models use fit().")
    epochs = _count("epochs", epochs, positive=False)
    batch_size = _count("batch_size", batch_size)
    lr = V.real("lr", lr, lo=0, lo_open=True)
    X_train, y_train = _data(X_train, y_train, model, "X_train", "y_train")
    model.train()
    n = len(X_train)
    losses = []

    for epoch in range(epochs):
        # Shuffle data
        indices = np.random.permutation(n)
        X_shuffled = X_train[indices]
        y_shuffled = y_train[indices]

        epoch_loss = 0
        for k, i in enumerate(range(0, n, batch_size)):
            X_batch = X_shuffled[i:i + batch_size]
            y_batch = y_shuffled[i:i + batch_size]

            # Forward pass
            output = model.forward(X_batch)
            loss = model.compute_loss(output, y_batch)
            if not math.isfinite(loss):
                raise NonFiniteLossError(loss, epoch + 1, k + 1)

            # Backward pass
            model.backward()

            # Update weights
            model.update(lr)

            epoch_loss += loss * len(X_batch)

        losses.append(epoch_loss / n)
        print(f"Epoch {epoch + 1}: Loss = {losses[-1]:.4f}")

    return losses


# ----------------------------------------------------------------- fit & co.


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs; with ``restore_best_weights`` the model ends with the
    parameters (and float buffers such as BatchNorm's running statistics) of
    its best epoch. ``monitor``: any value the history records, e.g.
    ``"val_loss"`` (default when validation data is given, else ``"loss"``),
    ``"loss"``, ``"accuracy"``, ``"val_accuracy"``, ``"val_mae"``.
    ``mode``: ``"auto"`` (accuracies are maximised, the rest minimised),
    ``"min"`` or ``"max"``. A NaN/Inf value warns and never counts as an
    improvement.
    """

    patience: int = 5
    min_delta: float = 0.0
    monitor: str | None = None
    restore_best_weights: bool = True
    mode: str = "auto"

    def __post_init__(self):
        self.patience = _count("patience", self.patience, positive=False)
        self.min_delta = V.real("min_delta", self.min_delta, lo=0)
        self.restore_best_weights = _cb._flag("restore_best_weights", self.restore_best_weights)
        if self.monitor is not None and not isinstance(self.monitor, str):
            raise TypeError(f"monitor must be a history key such as 'val_loss', got {self.monitor!r}")
        if self.mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {self.mode!r}")


@dataclass
class History:
    """What :func:`fit` returns: per-epoch lists. ``loss``, ``val_loss`` and
    ``val_accuracy`` are attributes (``val_*`` empty without validation data;
    ``val_accuracy`` empty for losses that are not classification losses);
    every recorded list, those included, is ``history["name"]`` (e.g.
    ``history["accuracy"]``, ``history["val_mae"]``, ``history["lr"]``), and
    ``history.keys()`` lists them.

    ``seed`` is the shuffling seed used (pass it again to resume),
    ``best_epoch`` the epoch (from 1) with the best monitored value when
    early stopping is on, ``stopped_early`` whether it ended training.
    """

    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    seed: int | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    logs: dict = field(default_factory=dict)

    def __getitem__(self, key):
        if key in ("epoch", "loss", "val_loss", "val_accuracy"):
            return getattr(self, key)
        return self.logs[key]

    def keys(self) -> list:
        own = [k for k in ("loss", "val_loss", "val_accuracy") if getattr(self, k)]
        return own + [k for k in self.logs if k not in own]

    def _append(self, logs: dict) -> None:
        for k, v in logs.items():
            if k in ("loss", "val_loss", "val_accuracy"):
                getattr(self, k).append(v)
            self.logs.setdefault(k, []).append(v)


def _snapshot(model) -> dict:
    """Copies of the float state (parameters, running statistics); counters
    such as Dropout's step are left to go on counting."""
    return {k: v for k, v in model.state_dict().items() if v.dtype.kind == "f"}


def _restore(model, snap: dict) -> None:
    state = model.state_dict()
    state.update(snap)
    model.load_state_dict(state)


def _progress_bar(progress):
    if not progress:
        return None
    try:
        isatty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        isatty = False
    if not isatty:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _check_loss(loss_fn):
    for attr in ("forward", "backward"):
        if not callable(getattr(loss_fn, attr, None)):
            raise TypeError(f"loss_fn must be a loss module such as nn.SoftmaxCrossEntropy(), "
                            f"got {type(loss_fn).__name__}")


def _check_optimizer(model, optimizer):
    """The optimizer must update this model's parameters (and only those)."""
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must have .step() (e.g. optim.Adam(model.parameters())), "
                        f"got {type(optimizer).__name__}")
    opt_params = getattr(optimizer, "params", None)
    if opt_params is None and getattr(optimizer, "param_groups", None) is not None:
        opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    if opt_params is None:
        return
    named = list(model.named_parameters())
    first = {}
    for name, p in named:
        if id(p) in first:  # backward overwrites .grad: the second use's share would be lost
            raise ValueError(f"{first[id(p)]!r} and {name!r} are the same Parameter: shared (tied) weights "
                             f"are not supported, since each module's backward overwrites the gradient")
        first[id(p)] = name
    mine = {id(p) for _, p in named}
    foreign = [i for i, p in enumerate(opt_params) if id(p) not in mine]
    if foreign:
        shapes = [tuple(opt_params[i].shape) for i in foreign[:5]]
        raise ValueError(
            f"the optimizer updates {len(foreign)} of its {len(opt_params)} parameters that are not "
            f"this model's (optimizer parameters {foreign[:5]}, shapes {shapes}): it was built for "
            f"another model; build it with optim.Adam(model.parameters()) or similar")
    held = {id(p) for p in opt_params}
    left = [name for name, p in named if id(p) not in held]
    if left:
        warnings.warn(f"the optimizer does not update the model parameters {left[:8]}"
                      f"{' ...' if len(left) > 8 else ''}; they stay as they are", stacklevel=3)


def _output_width(model, X) -> int | None:
    """Columns of the model's output, from one row in eval mode (None for 1-D outputs)."""
    with _mode(model, False):
        out = model.forward(X[:1], training=False)
    out = np.asarray(out)
    return out.shape[1] if out.ndim == 2 else None


def _bad_row(mask) -> int:
    return int(np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))[0])


def _check_targets(loss_fn, y, width, what, raw_dtype, offset=0):
    """All targets checked at once, before any step; errors name the dataset
    row (``offset`` + index) and the dtype as given. Returns y, reshaped to
    (N, 1) for a one-column regression or binary model given (N,)."""
    kind = getattr(loss_fn, "target_kind", None)
    if kind is None or width is None:
        return y
    if kind == "labels":
        if y.ndim == 2 and y.shape[1] == 1 and y.dtype.kind in "iu":
            raise ValueError(f"{what} has shape {y.shape}: class indices must be 1-D (N,); "
                             f"pass {what}.ravel()")
        if y.ndim == 1 and raw_dtype.kind not in "iu":
            raise TypeError(f"{what} must hold integer class indices for {type(loss_fn).__name__}, "
                            f"got dtype {raw_dtype} (convert with {what}.astype(np.int64))")
        if y.ndim == 1:
            bad = (y < 0) | (y >= width)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{what}[{i}] = {int(y[i])} (dataset row {i + offset}) is not a class "
                                 f"index in [0, {width}) for a model with {width} outputs")
            return y
        if y.shape[1] != width:
            raise ValueError(f"{what} has {y.shape[1]} columns of targets, the model {width} outputs")
        V.targets_array(what, y, y.shape, y.dtype)
        return y
    # regression ("values") and binary ("binary") targets: one per output
    if y.ndim == 1 and width == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != width:
        raise ValueError(f"{what} must have shape (N, {width}) to match the model's outputs, got "
                         f"{y.shape}" + (" (for one output per sample use a model with one output)"
                                         if y.ndim == 1 else ""))
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        i = _bad_row(~np.isfinite(y))
        raise ValueError(f"{what} holds NaN/Inf at dataset row {i + offset} (dtype {raw_dtype})")
    if kind == "binary" and ((y < 0) | (y > 1)).any():
        i = _bad_row((y < 0) | (y > 1))
        raise ValueError(f"{what} must hold targets in [0, 1] for {type(loss_fn).__name__}; dataset "
                         f"row {i + offset} = {y[i].tolist()} (dtype {raw_dtype})")
    return y


def _float_buffers(model) -> list:
    """(live, copy) pairs for the float buffers (BatchNorm's running statistics),
    refreshed before each forward so that a non-finite batch can be undone."""
    return [(b, b.copy()) for _, b in model.named_buffers() if b.dtype.kind == "f"]


def _min_train_batch(model) -> int:
    return max([getattr(m, "min_train_batch", 1) for m in model.modules()] or [1])


def _split(X, y, validation_split):
    """The last ``validation_split`` of the rows (before shuffling) for validation."""
    f = V.real("validation_split", validation_split, lo=0, hi=1, lo_open=True, hi_open=True)
    n_val = int(round(len(X) * f))
    if n_val < 1 or n_val >= len(X):
        raise ValueError(f"validation_split={validation_split} leaves {len(X) - n_val} training and "
                         f"{n_val} validation rows of {len(X)}; both need at least one")
    cut = len(X) - n_val
    return (X[:cut], y[:cut]), (X[cut:], y[cut:]), cut


def _fit_data(model, loss_fn, X, y, validation_data, validation_split):
    """(X, y, (X_val, y_val) or None), converted and every target checked."""
    raw_dtype = np.asarray(y).dtype if isinstance(y, (np.ndarray, list, tuple)) else None
    X, y = _data(X, y, model)
    val_offset, val_name, val_dtype = 0, "y", raw_dtype
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        (X, y), (Xv, yv), val_offset = _split(X, y, validation_split)
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (X_val, y_val)")
        val_name, val_dtype = "y_val", np.asarray(validation_data[1]).dtype
        Xv, yv = _data(validation_data[0], validation_data[1], model, "X_val", "y_val")
    width = _output_width(model, X) if len(X) else None
    y = _check_targets(loss_fn, y, width, "y", raw_dtype)
    if validation_data is None and validation_split is None:
        return X, y, None
    return X, y, (Xv, _check_targets(loss_fn, yv, width, val_name, val_dtype, val_offset))


class _Stopper:
    """Early stopping's state in fit: the monitor, the wait, the best weights."""

    @classmethod
    def make(cls, early_stopping, keys, default_monitor):
        if early_stopping is None:
            return None
        if isinstance(early_stopping, numbers.Integral) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping(patience=int(early_stopping))
        elif not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be an EarlyStopping or an int patience, "
                            f"got {type(early_stopping).__name__}")
        monitor = early_stopping.monitor or default_monitor
        if monitor.startswith("val_") and default_monitor != "val_loss":
            raise ValueError(f"early stopping on {monitor!r} needs validation_data")
        if monitor not in keys:
            raise ValueError(f"early stopping monitor {monitor!r} is not recorded by this fit; "
                             f"it records {keys} (add metrics=[...])")
        return cls(early_stopping, _cb.Monitor(monitor, early_stopping.mode, early_stopping.min_delta))

    def __init__(self, config, monitor):
        self.config, self.monitor = config, monitor
        self.wait, self.snap = 0, None

    def update(self, logs, epoch, model, history) -> bool:
        """Record this epoch; True when training should stop."""
        if self.monitor.improved(logs[self.monitor.name]):
            self.wait, history.best_epoch = 0, epoch + 1
            if self.config.restore_best_weights:
                self.snap = _snapshot(model)
            return False
        self.wait += 1
        history.stopped_early = self.wait >= self.config.patience
        return history.stopped_early

    def restore(self, model, history, progress) -> None:
        if self.snap is not None and history.best_epoch != (history.epoch[-1] if history.epoch else None):
            _restore(model, self.snap)
            if progress:
                print(f"Restored the weights of epoch {history.best_epoch} ({self.monitor.name} = "
                      f"{self.monitor.best:.4f})", flush=True)


def _resolve_metrics(metrics, loss_fn) -> list:
    names = _metrics.defaults_for(loss_fn) if metrics is None else metrics
    if isinstance(names, (str, bytes)) or callable(names):
        names = [names]
    out = [_metrics.get(m, loss_fn) for m in names]
    if len({name for name, _ in out}) != len(out):
        raise ValueError(f"metrics must not repeat a name, got {[name for name, _ in out]}")
    if any(name in ("loss", "lr") for name, _ in out):
        raise ValueError("metrics must not be named 'loss' or 'lr'")
    return out


def _current_lr(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        return float(groups[0]["lr"])
    lr = getattr(optimizer, "lr", None)
    return None if lr is None else float(lr)


def _overrides(cb, hook) -> bool:
    return getattr(type(cb), hook, None) is not getattr(_cb.Callback, hook)


class _Stop(Exception):
    pass


@_distributed.abort_on_error
def fit(model, loss_fn, optimizer, X, y, epochs=10, batch_size=64, validation_data=None,
        early_stopping=None, seed=None, progress=True, *, initial_epoch=0, shuffle=True,
        clip_grad_norm=None, eval_batch_size=1024, metrics=None, validation_split=None,
        drop_last=False, scheduler=None, callbacks=None, comm=None):
    """Train ``model`` with ``optimizer`` on ``loss_fn(model(X), y)``; return a :class:`History`.

    X: (N, D) float array of the model's dtype; y: class indices (N,) or
    targets (N, C) (for a one-output regression or binary model, (N,) is
    read as (N, 1)). Runs epochs ``initial_epoch .. epochs - 1`` (so
    ``initial_epoch=e`` resumes after e finished epochs). Each step:
    forward in training mode, loss, ``loss_fn.backward()``,
    ``model.backward(dlogits, need_input_grad=False)``, optional
    ``clip_grad_norm``, ``optimizer.step()``. The epoch loss is the mean
    over samples. The last batch of an epoch may be smaller; ``drop_last``
    drops it, and a last batch smaller than a layer can train on (one
    sample, for BatchNorm) is always dropped, with a warning.

    Checked before the first step: the optimizer updates this model's
    parameters (foreign ones raise ValueError), and every target (the error
    names the dataset row). A NaN/Inf loss raises
    :class:`NonFiniteLossError` naming the epoch and step, before that
    step's backward: the weights, the optimizer's state and BatchNorm's
    running statistics are as before the step.

    validation_data: ``(X_val, y_val)``, or ``validation_split``: the
    fraction of the rows (the last ones, before shuffling) held out;
    evaluated after each epoch. metrics: names (``"accuracy"``, ``"mae"``,
    ``"mse"``, see :mod:`fastnn.metrics`) or callables, tracked on the
    training batches (``history["accuracy"]``) and on the validation data
    (``history["val_accuracy"]``); default: accuracy for classification
    losses, none for the others. ``history["lr"]`` records the learning rate.
    early_stopping: an :class:`EarlyStopping`, or an int patience.
    scheduler: a ``fastnn.lr_scheduler`` schedule, stepped after each epoch
    (``ReduceLROnPlateau`` with its ``monitor``, default ``val_loss`` or
    ``loss``). callbacks: :class:`fastnn.callbacks.Callback` instances.
    seed: the shuffling seed (a non-negative int; None draws one from
    fastnn's generator, see ``fastnn.manual_seed``). progress: a tqdm bar
    per epoch when tqdm is installed and stdout is a terminal, else one
    printed line per epoch; False for silence. The model is left in
    training mode.

    comm: an mpi4py communicator (e.g. ``MPI.COMM_WORLD``) for data-parallel
    training: every rank passes the same arguments, ``batch_size`` is the
    global batch, and the result does not depend on the number of ranks
    (see ``fastnn.distributed``). A rank that raises aborts the job.
    """
    _check_model(model)
    _check_loss(loss_fn)
    _check_optimizer(model, optimizer)
    epochs = _count("epochs", epochs, positive=False)
    initial_epoch = _count("initial_epoch", initial_epoch, positive=False)
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch ({initial_epoch}) must not exceed epochs ({epochs})")
    batch_size = _count("batch_size", batch_size)
    if batch_size < _min_train_batch(model):
        raise ValueError(f"batch_size must be at least {_min_train_batch(model)} for this model "
                         f"(BatchNorm needs 2 samples per training batch), got {batch_size}")
    eval_batch_size = _count("eval_batch_size", eval_batch_size)
    if clip_grad_norm is not None:
        clip_grad_norm = V.real("clip_grad_norm", clip_grad_norm, lo=0, lo_open=True)
    train_metrics = _resolve_metrics(metrics, loss_fn)
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, _cb.Callback):
            raise TypeError(f"callbacks must be fastnn.callbacks.Callback instances, got {type(cb).__name__}")
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"scheduler must have .step() (see fastnn.lr_scheduler), got {type(scheduler).__name__}")
    X, y, validation_data = _fit_data(model, loss_fn, X, y, validation_data, validation_split)
    if seed is None:
        seed = int(_init.default_rng().integers(0, 2**63 - 1))
    else:
        seed = _count("seed", seed, positive=False)
    keys = ["loss"] + [name for name, _ in train_metrics]
    if validation_data is not None:
        keys += ["val_" + k for k in keys]
    default_monitor = "val_loss" if validation_data is not None else "loss"
    stopper = _Stopper.make(early_stopping, keys, default_monitor)
    plateau_monitor = None
    if scheduler is not None and isinstance(scheduler, _lrs.ReduceLROnPlateau):
        plateau_monitor = scheduler.monitor or default_monitor
        if plateau_monitor not in keys:
            raise ValueError(f"ReduceLROnPlateau monitor {plateau_monitor!r} is not recorded; "
                             f"this fit records {keys}")

    dp, seed = _distributed.setup(
        comm, model, optimizer, model.parameters(), seed, n=len(X), batch_size=batch_size,
        epochs=epochs, initial_epoch=initial_epoch, shuffle=shuffle, drop_last=drop_last,
        metrics=keys, validation=None if validation_data is None else len(validation_data[0]))
    progress = progress and _distributed.is_root(comm)
    history = History(seed=seed)
    for cb in callbacks:
        cb.model, cb.optimizer, cb.history, cb.stop_training = model, optimizer, history, False
    loop = _EpochLoop(model, loss_fn, optimizer, X, y, batch_size, shuffle, seed, drop_last,
                      clip_grad_norm, train_metrics, callbacks, _progress_bar(progress), epochs, dp)
    model.train()
    for cb in callbacks:
        cb.on_train_begin({})

    for epoch in range(initial_epoch, epochs):
        t0 = time.perf_counter()
        for cb in callbacks:
            cb.on_epoch_begin(epoch, {})
        lr = _current_lr(optimizer)
        logs, bar = loop.run(epoch)
        if validation_data is not None:
            if dp is None:
                vlogs = _evaluate(model, loss_fn, *validation_data, eval_batch_size, train_metrics)
            else:  # each rank evaluates its share of the rows
                vlogs = dp.evaluate(lambda Xs, ys: _evaluate(model, loss_fn, Xs, ys, eval_batch_size,
                                                             train_metrics), *validation_data, keys[:len(train_metrics) + 1])
            logs.update({"val_" + k: v for k, v in vlogs.items()})
        if lr is not None:
            logs["lr"] = lr
        history.epoch.append(epoch + 1)
        history._append(logs)
        summary = ", ".join(f"{k} = {v:.4g}" if k == "lr" else f"{k} = {v:.4f}" for k, v in logs.items())
        if bar is not None:
            bar.set_postfix_str(summary)
            bar.close()
        elif progress:
            print(f"Epoch {epoch + 1}/{epochs}: {summary} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)

        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(logs))
        if scheduler is not None:
            if plateau_monitor is not None:
                scheduler.step(logs[plateau_monitor])
            else:
                scheduler.step()
        stop = any(cb.stop_training for cb in callbacks)
        if stopper is not None and stopper.update(logs, epoch, model, history):
            stop = True
        if stop:
            break
    if stopper is not None:
        stopper.restore(model, history, progress)
    model.train()
    for cb in callbacks:
        cb.on_train_end({})
    return history


class _EpochLoop:
    """One epoch of training steps; what stays the same across epochs is set up once."""

    def __init__(self, model, loss_fn, optimizer, X, y, batch_size, shuffle, seed, drop_last,
                 clip_grad_norm, train_metrics, callbacks, bar_cls, epochs, dp=None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.X, self.y, self.batch_size = X, y, batch_size
        self.shuffle, self.seed, self.clip, self.metrics = shuffle, seed, clip_grad_norm, train_metrics
        self.bar_cls, self.epochs, self.dp = bar_cls, epochs, dp
        self.params = model.parameters()
        self.back_kw = _backward_kwargs(model)
        self.guard = _float_buffers(model)
        self.begin_hooks = [cb for cb in callbacks if _overrides(cb, "on_batch_begin")]
        self.end_hooks = [cb for cb in callbacks if _overrides(cb, "on_batch_end")]
        n = len(X)
        n_full, rest = divmod(n, batch_size)
        self.n_batches = n_full + (1 if rest and not drop_last else 0)
        self.n_used = n_full * batch_size + (rest if self.n_batches > n_full else 0)
        if self.n_batches > n_full and rest < _min_train_batch(model):
            warnings.warn(f"the last batch of each epoch would hold {rest} sample(s), fewer than a "
                          f"layer of this model can train on (BatchNorm needs 2); it is dropped "
                          f"(choose another batch_size, or drop_last=True to silence this)",
                          stacklevel=3)
            self.n_batches, self.n_used = n_full, n_full * batch_size
        if self.n_batches == 0:
            raise ValueError(f"no batch to train on: {n} samples, batch_size={batch_size}, "
                             f"drop_last={drop_last}")
        m = min(batch_size, n)
        self.xbuf = np.empty((m,) + X.shape[1:], X.dtype)
        self.ybuf = np.empty((m,) + y.shape[1:], y.dtype)
        # The compiled step (fastnn/_step.py) where it applies; else layer by layer.
        self.program = None
        # (not for a subclass with a forward or backward of its own: the program runs the layers)
        if (dp is None and isinstance(model, nn.Sequential) and not nn.overrides(model, nn.Sequential)
                and y.ndim == 1 and y.dtype.kind in "iu"):
            program = _step.SequentialProgram.build(model, loss_fn, X)
            if program is not None and program.serial_at(m):
                self.program = program
                self.fingerprint = _step._fingerprint(model)
                if y.dtype != np.int64:  # the program's label buffers (validated labels)
                    self.y = y.astype(np.int64)
                    self.ybuf = np.empty((m,), np.int64)

    def _current_program(self):
        """The program, rebuilt if a callback changed what it bakes in (a
        Dropout's p, a replaced layer...), or None: layer by layer."""
        if self.program is not None:
            key = _step._fingerprint(self.model)
            if key != self.fingerprint:
                self.program.keep_state()
                program = _step.SequentialProgram.build(self.model, self.loss_fn, self.X)
                ok = program is not None and program.serial_at(min(self.batch_size, len(self.X)))
                self.program, self.fingerprint = (program, key) if ok else (None, None)
        return self.program

    def _batch(self, program, order, s, e):
        """Rows s:e of the epoch (through ``order`` when shuffled): views of
        X and y, or copies in the program's or this loop's buffers."""
        X, y = self.X, self.y
        if program is None and order is None:
            return X[s:e], y[s:e]
        xb, yb = program.batch(e - s) if program is not None else (self.xbuf[:e - s], self.ybuf[:e - s])
        if order is None:
            np.copyto(xb, X[s:e])
            np.copyto(yb, y[s:e])
        else:
            idx = order[s:e]
            X.take(idx, 0, xb, "clip")  # the method: np.take's wrapper costs 0.8 us a call
            y.take(idx, 0, yb, "clip")
        return xb, yb

    def run(self, epoch):
        """Train one epoch; returns (logs, the open progress bar or None)."""
        model, loss_fn, optimizer, X = self.model, self.loss_fn, self.optimizer, self.X
        bs, n, guard, metrics, back_kw = self.batch_size, self.n_used, self.guard, self.metrics, self.back_kw
        program = self._current_program()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(X)) if self.shuffle else None
        bar = self.bar_cls(total=self.n_batches, desc=f"Epoch {epoch + 1}/{self.epochs}", unit="batch",
                           leave=True, file=sys.stdout, dynamic_ncols=True) if self.bar_cls else None
        total, seen = 0.0, 0
        sums = [0.0] * len(metrics)
        try:
            for step in range(self.n_batches):
                s = step * bs
                e = min(s + bs, len(X))
                if self.dp is not None:  # this rank's rows of the global batch
                    s, e = self.dp.share(s, e)
                xb, yb = self._batch(program, order, s, e)
                for cb in self.begin_hooks:
                    cb.on_batch_begin(step, {"size": e - s})
                if self.begin_hooks and program is not None and self._current_program() is not program:
                    program = self.program  # a hook changed the model: gather again
                    xb, yb = self._batch(program, order, s, e)
                for live, saved in guard:
                    np.copyto(saved, live)
                if program is not None:
                    finite = program.forward(e - s, keep_state=False)
                    loss, out = program.loss(), program.logits()
                else:
                    out = model.forward(xb, training=True)
                    loss = loss_fn.forward(out, yb)
                    finite = True
                if not (finite and math.isfinite(loss)):
                    for live, saved in guard:
                        np.copyto(live, saved)
                    raise NonFiniteLossError(loss, epoch + 1, step + 1, unchanged=True)
                for k, (_, fn) in enumerate(metrics):
                    if program is not None and fn is _metrics.accuracy:  # counted in the compiled forward
                        sums[k] += program.correct() / (e - s) * (e - s)
                    else:
                        sums[k] += fn(out, yb) * (e - s)
                if program is not None:
                    program.backward()
                else:
                    model.backward(loss_fn.backward(), **back_kw)
                if self.dp is not None:
                    self.dp.average_gradients()
                if self.clip is not None:
                    _clip_grad_norm(self.params, self.clip)
                optimizer.step()
                total += loss * (e - s)
                seen += e - s
                if bar is not None:
                    bar.update(1)
                    if step % 50 == 0:
                        bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
                for cb in self.end_hooks:
                    cb.on_batch_end(step, {"loss": loss, "size": e - s})
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        finally:
            if program is not None:  # the modules' state after the last step, as layer by layer
                program.keep_state()
        if self.dp is not None:  # sums over all ranks' rows
            total, *sums = self.dp.sum(total, *sums)
        logs = {"loss": total / n}
        logs.update({name: sums[k] / n for k, (name, _) in enumerate(metrics)})
        return logs, bar


def _evaluate(model, loss_fn, X, y, batch_size, metrics) -> dict:
    total = 0.0
    sums = [0.0] * len(metrics)
    # no backward follows: a fastnn loss in training mode would also compute its gradient
    kw = {"training": False} if isinstance(loss_fn, nn.Module) else {}
    with _mode(model, False):
        for s in range(0, len(X), batch_size):
            xb, yb = X[s:s + batch_size], y[s:s + batch_size]
            out = model.forward(xb, training=False)
            total += loss_fn.forward(out, yb, **kw) * len(xb)
            for k, (_, fn) in enumerate(metrics):
                sums[k] += fn(out, yb) * len(xb)
    logs = {"loss": total / len(X)}
    logs.update({name: sums[k] / len(X) for k, (name, _) in enumerate(metrics)})
    return logs


def evaluate(model, loss_fn, X, y, batch_size=1024, metrics=None):
    """``model`` on (X, y) in eval mode and in batches; the previous
    train/eval mode is restored.

    Without ``metrics``: ``(loss, accuracy)`` as floats, the accuracy NaN
    for a loss that is not a classification loss. With ``metrics`` (names
    or callables, see :mod:`fastnn.metrics`): a dict with ``"loss"`` and
    each metric."""
    _check_model(model)
    _check_loss(loss_fn)
    batch_size = _count("batch_size", batch_size)
    raw_dtype = np.asarray(y).dtype if isinstance(y, (np.ndarray, list, tuple)) else None
    X, y = _data(X, y, model)
    # every target up front, as fit: errors name the dataset row and the dtype given;
    # (N,) becomes (N, 1) for one regression or binary output
    y = _check_targets(loss_fn, y, _output_width(model, X), "y", raw_dtype)
    if metrics is not None:
        return _evaluate(model, loss_fn, X, y, batch_size, _resolve_metrics(metrics, loss_fn))
    classify = getattr(loss_fn, "classification", False)
    acc = [_metrics.get("accuracy", loss_fn)] if classify else []
    logs = _evaluate(model, loss_fn, X, y, batch_size, acc)
    return logs["loss"], logs.get("accuracy", math.nan)


def predict(model, X, batch_size=1024):
    """The model's outputs (logits, not probabilities) for X, in eval mode and
    in batches: a fresh (N, ...) array. The previous mode is restored."""
    _check_model(model)
    batch_size = _count("batch_size", batch_size)
    X = V.float_array("X", X, dtype=_model_dtype(model))
    out = None
    with _mode(model, False):
        for s in range(0, len(X), batch_size):
            o = model.forward(X[s:s + batch_size], training=False)
            if out is None:
                out = np.empty((len(X),) + o.shape[1:], o.dtype)
            out[s:s + len(o)] = o
    return out


def predict_proba(model, X, batch_size=1024, *, kind="softmax"):
    """Class probabilities of a classifier: ``softmax`` of the outputs
    (a model trained with ``SoftmaxCrossEntropy``; rows sum to 1) or
    ``kind="sigmoid"`` (``BCEWithLogitsLoss``: one probability per output)."""
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"kind must be 'softmax' or 'sigmoid', got {kind!r}")
    z = predict(model, X, batch_size).astype(np.float64)
    if kind == "sigmoid":
        p = np.empty_like(z)
        pos = z >= 0
        p[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
        ez = np.exp(z[~pos])
        p[~pos] = ez / (1.0 + ez)
    else:
        if z.ndim != 2:
            raise ValueError(f"softmax probabilities need (N, C) outputs, got shape {z.shape}")
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    return p.astype(_model_dtype(model) or np.float64)

# ------------------------------------------------------------ the checklist


def overfit_single_batch(model, loss_fn, X, y, steps=100, lr=1e-2, optimizer=None) -> float:
    """The seed's first check: train on one small batch (e.g. 32 samples) for
    ``steps`` steps; the returned loss (on that batch, eval mode, after
    training) should be near 0. If it is not, forward or backward has a bug.

    Uses ``Adam(lr)`` unless an ``optimizer`` is given (checked as in
    :func:`fit`: it must update this model's parameters). Trains ``model``
    in place (use a fresh one); restores its train/eval mode.
    """
    from .optim import Adam

    _check_model(model)
    _check_loss(loss_fn)
    steps = _count("steps", steps)
    X, y = _data(X, y, model)
    if optimizer is None:
        optimizer = Adam(model.parameters(), lr=lr)
    else:
        _check_optimizer(model, optimizer)
    back_kw = _backward_kwargs(model)
    with _mode(model, True):
        for step in range(steps):
            loss = loss_fn.forward(model.forward(X, training=True), y)
            if not math.isfinite(loss):
                raise NonFiniteLossError(loss, 1, step + 1)
            model.backward(loss_fn.backward(), **back_kw)
            optimizer.step()
    return evaluate(model, loss_fn, X, y, batch_size=len(X))[0]


def _float64_copy(module):
    """A deep copy of ``module`` with every parameter and float buffer in float64."""
    m = copy.deepcopy(module)
    for mod in m.modules():
        for name, p in list(mod._named_params()):
            setattr(mod, name, nn.Parameter(np.asarray(p, dtype=np.float64)))
        for name, b in list(mod._named_buffers()):
            if b.dtype.kind == "f":
                setattr(mod, name, b.astype(np.float64))
    bad = [name for name, p in m.named_parameters() if p.dtype != np.float64]
    if bad:
        raise TypeError(f"gradcheck could not make parameters {bad} float64; build the model "
                        f"with dtype=np.float64")
    return m


_F64_EPS = float(np.finfo(np.float64).eps)


def gradcheck(module, x, y=None, loss_fn=None, *, eps=1e-5, max_checks=20, floor=1e-8,
              seed=0, training=True) -> float:
    """Largest relative error between the analytic gradients (``backward``)
    and central differences, over the input and every parameter, in float64.

    The scalar checked is ``loss_fn(module(x), y)`` when ``loss_fn`` is
    given, else ``sum(module(x) * r)`` for a fixed random ``r``. Works on a
    float64 copy of ``module`` (the original is untouched); Dropout masks are
    held fixed. ``max_checks`` random entries of each array are perturbed
    (None: all). The error of an entry is ``|a - n| / max(|a|, |n|, floor)``,
    where differences within the rounding error of the central difference
    (``32 * 2.2e-16 * |f| / eps``) count as zero.
    Below 1e-7 is right; around 1e-4 can come from a ReLU kink being
    crossed; 1e-2 and above is a bug.

    ``training=False`` checks the eval-mode forward and backward (a
    Sequential runs its layer path for it: its eval fast path keeps nothing
    for a backward). A model with BatchNorm is refused there: BatchNorm has
    a backward in training mode only.
    """
    _check_model(module, "module")
    eps = V.real("eps", eps, lo=0, lo_open=True)
    floor = V.real("floor", floor, lo=0, lo_open=True)
    if max_checks is not None:
        max_checks = _count("max_checks", max_checks)
    seed = _count("seed", seed, positive=False)
    training = bool(training)
    if not training:
        bn = [type(mod).__name__ for mod in module.modules() if isinstance(mod, nn.BatchNorm)]
        if bn:
            raise ValueError(f"gradcheck(training=False) cannot check a model with {bn[0]}: it has a "
                             f"backward in training mode only; use training=True")
        # Check mode makes Sequential run the layer path, whose eval forward keeps what backward needs.
        with F.check_finite(True):
            return _gradcheck(module, x, y, loss_fn, eps, max_checks, floor, seed, training)
    return _gradcheck(module, x, y, loss_fn, eps, max_checks, floor, seed, training)


def _gradcheck(module, x, y, loss_fn, eps, max_checks, floor, seed, training):
    m = _float64_copy(module)
    m.train(training)
    x = np.array(V.float_array("x", x), dtype=np.float64, order="C")
    if loss_fn is not None:
        _check_loss(loss_fn)
        loss_fn = copy.deepcopy(loss_fn)
        if y is None:
            raise ValueError("gradcheck with loss_fn needs the targets y")
        y = np.asarray(y)
        if y.dtype.kind == "f":
            y = y.astype(np.float64)
    # Mixed with a constant so that r never equals an x drawn from the same seed.
    rng = np.random.default_rng([seed, 0x67726164])
    drops = [d for d in m.modules() if isinstance(d, nn.Dropout)]
    steps0 = [d.step for d in drops]
    r = None

    def forward():
        for d, s in zip(drops, steps0):
            d.step = s  # the same masks on every call
        return m.forward(x, training=training)

    def f():
        out = forward()
        if loss_fn is not None:
            return float(loss_fn.forward(out, y))
        return float(np.sum(out * r))

    out = forward()
    if loss_fn is None:
        r = rng.standard_normal(out.shape)
        dout = r
    else:
        loss_fn.forward(out, y)
        dout = loss_fn.backward()
    dx = m.backward(dout)
    arrays = [("x", x, dx)] if isinstance(dx, np.ndarray) else []
    arrays += [(name, p, np.array(p.grad)) for name, p in m.named_parameters()]

    worst = 0.0
    for name, a, grad in arrays:
        flat = a.view(np.ndarray).reshape(-1)
        gflat = grad.reshape(-1)
        k = flat.size if max_checks is None else min(max_checks, flat.size)
        idx = rng.choice(flat.size, size=k, replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            fp = f()
            flat[i] = old - eps
            fm = f()
            flat[i] = old
            num = (fp - fm) / (2 * eps)
            ana = float(gflat[i])
            # What rounding alone can put into the central difference counts as zero.
            noise = 32 * _F64_EPS * max(abs(fp), abs(fm)) / eps
            err = max(abs(ana - num) - noise, 0.0) / max(abs(ana), abs(num), floor)
            worst = max(worst, err)
    return worst
