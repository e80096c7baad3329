"""Callbacks for ``fit(..., callbacks=[...])``.

Subclass :class:`Callback` and override the hooks you need; ``fit`` sets
``self.model``, ``self.optimizer`` and ``self.history`` before training.
Hooks, in order: ``on_train_begin(logs)``, then per epoch
``on_epoch_begin(epoch, logs)``, per batch ``on_batch_begin(batch, logs)``
and ``on_batch_end(batch, logs)`` (``logs = {"loss": ..., "size": ...}``),
``on_epoch_end(epoch, logs)`` (``logs``: this epoch's history values, e.g.
``loss``, ``val_loss``, ``accuracy``, ``lr``), and ``on_train_end(logs)``.
``epoch`` and ``batch`` count from 0. Batch hooks are called only for
callbacks that override them, so the training step stays as fast.
Setting ``self.stop_training = True`` ends training after the epoch.
"""

from __future__ import annotations

import csv
import errno
import math
import os
import warnings

import numpy as np

from . import _validate as V
from . import metrics as _metrics

__all__ = ["Callback", "ModelCheckpoint", "CSVLogger", "Monitor"]


def _flag(name, value) -> bool:
    # bool("no") is True: a string would silently mean the opposite
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_writable(what, path) -> None:
    """Raise now, naming ``path``, where saving to it would fail after an epoch."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"{what} path is a directory", path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"{what} cannot write there: the directory "
                                f"{folder!r} does not exist", path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{what} cannot write there: the directory "
                              f"{folder!r} is not writable", path)


class Monitor:
    """Tracks the best value of one history entry. ``mode``: ``"min"``,
    ``"max"`` or ``"auto"`` (max for accuracies, else min). A NaN/Inf value
    warns and never counts as an improvement."""

    def __init__(self, name, mode="auto", min_delta=0.0):
        if not isinstance(name, str):
            raise TypeError(f"name must be a history key such as 'val_loss', got {name!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.name = name
        base = name[4:] if name.startswith("val_") else name
        self.maximize = mode == "max" or mode == "auto" and base in _metrics.MAXIMIZE
        self.min_delta = V.real("min_delta", min_delta, lo=0)
        self.best = None

    def improved(self, value) -> bool:
        """Whether ``value`` beats the best so far (then it becomes the best)."""
        value = float(value)
        if not math.isfinite(value):
            warnings.warn(f"{self.name} is {value}: not counted as an improvement", RuntimeWarning,
                          stacklevel=3)
            return False
        if self.best is None or (value > self.best + self.min_delta if self.maximize
                                 else value < self.best - self.min_delta):
            self.best = value
            return True
        return False


class Callback:
    """Base class: every hook does nothing."""

    model = None
    optimizer = None
    history = None
    stop_training = False

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class ModelCheckpoint(Callback):
    """Save the model (and optimizer) with ``fastnn.save`` at each epoch whose
    ``monitor`` value is the best so far (``save_best_only=True``), or at
    every epoch. The archive holds ``epoch`` (finished epochs) and the
    ``fit`` seed, so ``fit(..., seed=s, initial_epoch=epoch)`` resumes.
    ``best_epoch`` (from 1) and ``best`` say what was saved last."""

    def __init__(self, path, monitor="val_loss", mode="auto", save_best_only=True,
                 save_optimizer=True, min_delta=0.0):
        self.path = os.fspath(path)
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a history key such as 'val_loss', got {monitor!r}")
        self.monitor = Monitor(monitor, mode, min_delta)
        self.save_best_only = _flag("save_best_only", save_best_only)
        self.save_optimizer = _flag("save_optimizer", save_optimizer)
        self.best_epoch = None

    @property
    def best(self):
        return self.monitor.best

    def on_train_begin(self, logs=None):
        _check_writable("ModelCheckpoint", self.path)

    def on_epoch_end(self, epoch, logs=None):
        from .checkpoint import save

        name = self.monitor.name
        if not logs or name not in logs:
            raise ValueError(f"ModelCheckpoint monitors {name!r}, which this fit does not record; "
                             f"it records {sorted(logs or {})}")
        if self.monitor.improved(logs[name]) or not self.save_best_only:
            extra = {"epoch": epoch + 1}
            if self.history is not None and self.history.seed is not None:
                extra["seed"] = self.history.seed
            save(self.path, self.model, self.optimizer if self.save_optimizer else None, **extra)
            self.best_epoch = epoch + 1


class CSVLogger(Callback):
    """One CSV row per epoch: ``epoch`` (from 1) and every logged value.
    ``append=True`` adds to an existing file (no second header)."""

    def __init__(self, path, separator=",", append=False):
        self.path = os.fspath(path)
        if not isinstance(separator, str):
            raise TypeError(f"separator must be a one-character string, got {separator!r}")
        if len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.separator = separator
        self.append = _flag("append", append)
        self._keys = None

    def on_train_begin(self, logs=None):
        _check_writable("CSVLogger", self.path)
        self._keys = None
        if not self.append and os.path.exists(self.path):
            os.remove(self.path)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        new_file = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if self._keys is None:
            self._keys = sorted(logs)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f, delimiter=self.separator)
            if new_file:
                w.writerow(["epoch"] + self._keys)
            w.writerow([epoch + 1] + [logs.get(k, "") for k in self._keys])
