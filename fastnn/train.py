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
from dataclasses import dataclass, field

import numpy as np

from . import _validate as V
from . import distributed as _distributed
from . import init as _init
from . import nn
from .regularization import clip_grad_norm as _clip_grad_norm

__all__ = [
    "train", "fit", "evaluate", "predict", "History", "EarlyStopping",
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

    def __init__(self, loss, epoch, step):
        self.loss, self.epoch, self.step = loss, epoch, step
        super().__init__(f"the training loss became {loss} at epoch {epoch}, step {step}; "
                         f"training stopped. {_REMEDIES}")


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


def _data(X, y, model, what="X", y_name="y"):
    """X as a C-contiguous float array of the model's dtype; y as labels or targets."""
    X = V.float_array(what, X, dtype=_model_dtype(model))
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
        y = np.ascontiguousarray(y, dtype=np.int64)
    return X, y


def _backward_kwargs(model):
    """Skip the first layer's input gradient where the model allows it."""
    if isinstance(model, nn.Sequential):
        return {"need_input_grad": False}
    if isinstance(model, nn.Linear):
        return {"need_dx": False}
    return {}


def _correct(logits, y) -> int:
    pred = logits.argmax(axis=1)
    labels = y if y.ndim == 1 else y.argmax(axis=1)
    return int(np.count_nonzero(pred == labels))


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
    its best epoch. ``monitor``: ``"val_loss"`` (default when validation data
    is given, else ``"loss"``), ``"loss"`` or ``"val_accuracy"`` (maximised).
    """

    patience: int = 5
    min_delta: float = 0.0
    monitor: str | None = None
    restore_best_weights: bool = True

    def __post_init__(self):
        self.patience = _count("patience", self.patience, positive=False)
        self.min_delta = V.real("min_delta", self.min_delta, lo=0)
        if self.monitor not in (None, "loss", "val_loss", "val_accuracy"):
            raise ValueError(f"monitor must be 'loss', 'val_loss' or 'val_accuracy', got {self.monitor!r}")


@dataclass
class History:
    """What :func:`fit` returns: per-epoch lists (``val_*`` are empty
    without validation data); ``history["loss"]`` works too.

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

    def __getitem__(self, key):
        return getattr(self, key)


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


@_distributed.abort_on_error
def fit(model, loss_fn, optimizer, X, y, epochs=10, batch_size=64, validation_data=None,
        early_stopping=None, seed=None, progress=True, *, initial_epoch=0, shuffle=True,
        clip_grad_norm=None, eval_batch_size=1024, comm=None):
    """Train ``model`` with ``optimizer`` on ``loss_fn(model(X), y)``; return a :class:`History`.

    X: (N, D) float array of the model's dtype; y: class indices (N,) or
    targets (N, C). Runs epochs ``initial_epoch .. epochs - 1`` (so
    ``initial_epoch=e`` resumes after e finished epochs). Each step:
    forward in training mode, loss, ``loss_fn.backward()``,
    ``model.backward(dlogits, need_input_grad=False)``, optional
    ``clip_grad_norm``, ``optimizer.step()``. The last batch of an epoch may
    be smaller; the epoch loss is the mean over samples.

    validation_data: ``(X_val, y_val)``, evaluated after each epoch
    (``val_loss``, ``val_accuracy``). early_stopping: an
    :class:`EarlyStopping`, or an int patience. seed: the shuffling seed (a
    non-negative int; None draws one from fastnn's generator, see
    ``fastnn.manual_seed``). progress: a tqdm bar per epoch when tqdm is
    installed and stdout is a terminal, else one printed line per epoch;
    False for silence.

    A NaN/Inf training loss raises :class:`NonFiniteLossError` naming the
    epoch and step. The model is left in training mode.

    comm: an mpi4py communicator (e.g. ``MPI.COMM_WORLD``) for data-parallel
    training: every rank passes the same arguments, ``batch_size`` is the
    global batch, and the result does not depend on the number of ranks
    (see ``fastnn.distributed``). A rank that raises aborts the job.
    """
    _check_model(model)
    for attr in ("forward", "backward"):
        if not callable(getattr(loss_fn, attr, None)):
            raise TypeError(f"loss_fn must be a loss module such as nn.SoftmaxCrossEntropy(), "
                            f"got {type(loss_fn).__name__}")
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must have .step() (e.g. optim.Adam(model.parameters())), "
                        f"got {type(optimizer).__name__}")
    epochs = _count("epochs", epochs, positive=False)
    initial_epoch = _count("initial_epoch", initial_epoch, positive=False)
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch ({initial_epoch}) must not exceed epochs ({epochs})")
    batch_size = _count("batch_size", batch_size)
    eval_batch_size = _count("eval_batch_size", eval_batch_size)
    if clip_grad_norm is not None:
        clip_grad_norm = V.real("clip_grad_norm", clip_grad_norm, lo=0, lo_open=True)
    X, y = _data(X, y, model)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a pair (X_val, y_val)")
        Xv, yv = _data(validation_data[0], validation_data[1], model, "X_val", "y_val")
    if seed is None:
        seed = int(_init.default_rng().integers(0, 2**63 - 1))
    else:
        seed = _count("seed", seed, positive=False)
    if isinstance(early_stopping, numbers.Integral) and not isinstance(early_stopping, bool):
        early_stopping = EarlyStopping(patience=int(early_stopping))
    elif early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"early_stopping must be an EarlyStopping or an int patience, "
                        f"got {type(early_stopping).__name__}")
    monitor = None
    if early_stopping is not None:
        monitor = early_stopping.monitor or ("val_loss" if validation_data is not None else "loss")
        if monitor.startswith("val_") and validation_data is None:
            raise ValueError(f"early stopping on {monitor!r} needs validation_data")
    maximize = monitor == "val_accuracy"

    params = model.parameters()
    dp, seed = _distributed.setup(comm, model, optimizer, params, seed, n=len(X), batch_size=batch_size,
                                  epochs=epochs, initial_epoch=initial_epoch, shuffle=shuffle,
                                  validation=None if validation_data is None else len(Xv))
    progress = progress and _distributed.is_root(comm)
    bar_cls = _progress_bar(progress)
    back_kw = _backward_kwargs(model)
    n = len(X)
    n_batches = -(-n // batch_size)
    xbuf = np.empty((min(batch_size, n),) + X.shape[1:], X.dtype)
    ybuf = np.empty((min(batch_size, n),) + y.shape[1:], y.dtype)
    history = History(seed=seed)
    best, best_snap, wait = None, None, 0
    model.train()

    for epoch in range(initial_epoch, epochs):
        t0 = time.perf_counter()
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else None
        bar = bar_cls(total=n_batches, desc=f"Epoch {epoch + 1}/{epochs}", unit="batch",
                      leave=True, file=sys.stdout, dynamic_ncols=True) if bar_cls else None
        total = 0.0
        try:
            for step in range(n_batches):
                s = step * batch_size
                e = min(s + batch_size, n)
                if dp is not None:  # this rank's rows of the global batch
                    s, e = dp.share(s, e)
                if order is None:
                    xb, yb = X[s:e], y[s:e]
                else:
                    idx = order[s:e]
                    xb, yb = xbuf[:e - s], ybuf[:e - s]
                    np.take(X, idx, axis=0, out=xb, mode="clip")
                    np.take(y, idx, axis=0, out=yb, mode="clip")
                logits = model.forward(xb, training=True)
                loss = loss_fn.forward(logits, yb)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(loss, epoch + 1, step + 1)
                model.backward(loss_fn.backward(), **back_kw)
                if dp is not None:
                    dp.average_gradients()
                if clip_grad_norm is not None:
                    _clip_grad_norm(params, clip_grad_norm)
                optimizer.step()
                total += loss * (e - s)
                if bar is not None:
                    bar.update(1)
                    if step % 50 == 0:
                        bar.set_postfix(loss=f"{total / e:.4f}", refresh=False)
            epoch_loss = (total if dp is None else dp.sum(total)[0]) / n
            history.epoch.append(epoch + 1)
            history.loss.append(epoch_loss)
            summary = f"loss = {epoch_loss:.4f}"
            if validation_data is not None:
                vl, va = (evaluate(model, loss_fn, Xv, yv, eval_batch_size) if dp is None
                          else dp.evaluate(evaluate, model, loss_fn, Xv, yv, eval_batch_size))
                history.val_loss.append(vl)
                history.val_accuracy.append(va)
                summary += f", val_loss = {vl:.4f}, val_accuracy = {va:.4f}"
            if bar is not None:
                bar.set_postfix_str(summary)
        finally:
            if bar is not None:
                bar.close()
        if progress and bar is None:
            print(f"Epoch {epoch + 1}/{epochs}: {summary} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)

        if early_stopping is not None:
            value = {"loss": history.loss, "val_loss": history.val_loss,
                     "val_accuracy": history.val_accuracy}[monitor][-1]
            delta = early_stopping.min_delta
            improved = best is None and math.isfinite(value) or best is not None and (
                value > best + delta if maximize else value < best - delta)
            if improved:
                best, wait, history.best_epoch = value, 0, epoch + 1
                if early_stopping.restore_best_weights:
                    best_snap = _snapshot(model)
            else:
                wait += 1
                if wait >= early_stopping.patience:
                    history.stopped_early = True
                    break
    if best_snap is not None and history.best_epoch != (history.epoch[-1] if history.epoch else None):
        _restore(model, best_snap)
        if progress:
            print(f"Restored the weights of epoch {history.best_epoch} ({monitor} = {best:.4f})",
                  flush=True)
    model.train()
    return history


def evaluate(model, loss_fn, X, y, batch_size=1024):
    """Mean loss and accuracy of ``model`` on (X, y), in eval mode and in
    batches: returns ``(loss, accuracy)`` as floats. The previous train/eval
    mode is restored."""
    _check_model(model)
    batch_size = _count("batch_size", batch_size)
    X, y = _data(X, y, model)
    total, correct = 0.0, 0
    with _mode(model, False):
        for s in range(0, len(X), batch_size):
            xb, yb = X[s:s + batch_size], y[s:s + batch_size]
            logits = model.forward(xb, training=False)
            total += loss_fn.forward(logits, yb) * len(xb)
            correct += _correct(logits, yb)
    return total / len(X), correct / len(X)


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


# ------------------------------------------------------------ the checklist


def overfit_single_batch(model, loss_fn, X, y, steps=100, lr=1e-2, optimizer=None) -> float:
    """The seed's first check: train on one small batch (e.g. 32 samples) for
    ``steps`` steps; the returned loss (on that batch, eval mode, after
    training) should be near 0. If it is not, forward or backward has a bug.

    Uses ``Adam(lr)`` unless an ``optimizer`` is given. Trains ``model`` in
    place (use a fresh one); restores its train/eval mode.
    """
    from .optim import Adam

    _check_model(model)
    steps = _count("steps", steps)
    X, y = _data(X, y, model)
    if optimizer is None:
        optimizer = Adam(model.parameters(), lr=lr)
    back_kw = _backward_kwargs(model)
    with _mode(model, True):
        for step in range(steps):
            loss = loss_fn.forward(model.forward(X, training=True), y)
            if not math.isfinite(loss):
                raise NonFiniteLossError(loss, 1, step + 1)
            model.backward(loss_fn.backward(), **back_kw)
            optimizer.step()
    return evaluate(model, loss_fn, X, y, batch_size=len(X))[0]


def _modules(m):
    yield m
    for _, child in m._children():
        yield from _modules(child)


def _float64_copy(module):
    """A deep copy of ``module`` with every parameter and float buffer in float64."""
    m = copy.deepcopy(module)
    for mod in _modules(m):
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
    """
    _check_model(module, "module")
    eps = V.real("eps", eps, lo=0, lo_open=True)
    floor = V.real("floor", floor, lo=0, lo_open=True)
    if max_checks is not None:
        max_checks = _count("max_checks", max_checks)
    m = _float64_copy(module)
    m.train(bool(training))
    x = np.array(V.float_array("x", x), dtype=np.float64, order="C")
    if loss_fn is not None:
        loss_fn = copy.deepcopy(loss_fn)
        if y is None:
            raise ValueError("gradcheck with loss_fn needs the targets y")
        y = np.asarray(y)
        if y.dtype.kind == "f":
            y = y.astype(np.float64)
    # Mixed with a constant so that r never equals an x drawn from the same seed.
    rng = np.random.default_rng([seed, 0x67726164])
    drops = [d for d in _modules(m) if isinstance(d, nn.Dropout)]
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
