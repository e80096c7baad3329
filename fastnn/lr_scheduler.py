"""Learning-rate schedules, PyTorch-shaped (also ``fastnn.optim.lr_scheduler``).

Build one on an optimizer, call ``scheduler.step()`` once per epoch after
training it (``ReduceLROnPlateau.step(metric)`` takes the monitored value),
or pass it to ``fit(..., scheduler=...)``, which does that. A schedule sets
``group["lr"]`` in each of ``optimizer.param_groups`` (an optimizer without
parameter groups: its ``lr``); the starting rates are the groups' rates when
the schedule is built. ``get_last_lr()`` lists the current rates;
``state_dict()``/``load_state_dict()`` save and restore the schedule.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "ReduceLROnPlateau"]


class _LrGroup:
    """An optimizer without ``param_groups`` seen as one group: ``g["lr"]`` is ``optimizer.lr``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def __getitem__(self, key):
        if key != "lr":
            raise KeyError(key)
        return self.optimizer.lr

    def __setitem__(self, key, value):
        if key != "lr":
            raise KeyError(key)
        self.optimizer.lr = value


def _groups(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if groups is not None:
        return groups
    if not hasattr(optimizer, "lr"):
        raise TypeError(f"optimizer must have param_groups or lr, got {type(optimizer).__name__}")
    return [_LrGroup(optimizer)]


def _number(name, value, lo=None, lo_open=False, hi=None, integer=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {type(value).__name__}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        finite = False
    if not finite or lo is not None and (value <= lo if lo_open else value < lo) \
            or hi is not None and value > hi:
        rng = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be {rng}, got {value}")
    return int(value) if integer else float(value)


class LRScheduler:
    """Base class: ``lr_at(epoch)`` gives each group's rate after ``epoch`` steps."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = [float(g["lr"]) for g in _groups(optimizer)]
        self.last_epoch = 0
        self._last_lr = list(self.base_lrs)

    def lr_at(self, epoch):  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        self._set(self.lr_at(self.last_epoch))

    def _set(self, lrs):
        for g, lr in zip(_groups(self.optimizer), lrs):
            g["lr"] = lr
        self._last_lr = list(lrs)

    def get_last_lr(self) -> list:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
        self._set(self._last_lr)


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _number("step_size", step_size, lo=1, integer=True)
        self.gamma = _number("gamma", gamma, lo=0, lo_open=True)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return [b * self.gamma ** (epoch // self.step_size) for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs
    (``lr = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2``,
    PyTorch's schedule; held at ``eta_min`` after ``T_max``).

    With ``warmup_epochs=w`` the rate first rises linearly from
    ``warmup_start_factor * base_lr`` (at epoch 0) to ``base_lr`` (at epoch
    w), then the cosine runs over the remaining ``T_max - w`` epochs.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, warmup_epochs=0, warmup_start_factor=0.1):
        self.T_max = _number("T_max", T_max, lo=1, integer=True)
        self.eta_min = _number("eta_min", eta_min, lo=0)
        self.warmup_epochs = _number("warmup_epochs", warmup_epochs, lo=0, integer=True)
        if self.warmup_epochs >= self.T_max:
            raise ValueError(f"warmup_epochs ({warmup_epochs}) must be less than T_max ({T_max})")
        self.warmup_start_factor = _number("warmup_start_factor", warmup_start_factor, lo=0, lo_open=True,
                                           hi=1)
        super().__init__(optimizer)
        if self.warmup_epochs:
            self._set(self.lr_at(0))

    def lr_at(self, epoch):
        w = self.warmup_epochs
        if epoch < w:
            f = self.warmup_start_factor + (1 - self.warmup_start_factor) * epoch / w
            return [b * f for b in self.base_lrs]
        t = min(epoch - w, self.T_max - w) / (self.T_max - w)
        c = (1 + math.cos(math.pi * t)) / 2
        return [self.eta_min + (b - self.eta_min) * c for b in self.base_lrs]


class ReduceLROnPlateau(LRScheduler):
    """Multiply the rates by ``factor`` when ``step(metric)`` has not improved
    for more than ``patience`` epochs (PyTorch's rule: ``threshold`` relative
    or absolute, then ``cooldown`` epochs without counting, never below
    ``min_lr``). ``monitor`` names what ``fit`` passes (default
    ``"val_loss"`` with validation data, else ``"loss"``). A NaN/Inf metric
    warns and counts as no improvement."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8, monitor=None):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        factor = _number("factor", factor, lo=0, lo_open=True)
        if factor >= 1:
            raise ValueError(f"factor must be < 1, got {factor}")
        self.mode, self.factor, self.threshold_mode = mode, factor, threshold_mode
        self.patience = _number("patience", patience, lo=0, integer=True)
        self.threshold = _number("threshold", threshold, lo=0)
        self.cooldown = _number("cooldown", cooldown, lo=0, integer=True)
        self.min_lr = _number("min_lr", min_lr, lo=0)
        self.eps = _number("eps", eps, lo=0)
        self.monitor = monitor
        self.best = None
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        super().__init__(optimizer)

    def _better(self, a):
        if self.best is None:
            return True
        if self.threshold_mode == "rel":
            f = 1 - self.threshold if self.mode == "min" else 1 + self.threshold
            ref = self.best * f
        else:
            ref = self.best - self.threshold if self.mode == "min" else self.best + self.threshold
        return a < ref if self.mode == "min" else a > ref

    def lr_at(self, epoch):
        return self.get_last_lr()

    def step(self, metric):
        if isinstance(metric, (str, bytes, bool, np.bool_)) or metric is None:
            raise TypeError(f"metric must be a number, got {type(metric).__name__}")
        try:
            metric = float(metric)
        except (TypeError, ValueError):
            raise TypeError(f"metric must be a number, got {type(metric).__name__}") from None
        self.last_epoch += 1
        if not math.isfinite(metric):
            warnings.warn(f"ReduceLROnPlateau got {metric}: counted as no improvement",
                          RuntimeWarning, stacklevel=2)
            self.num_bad_epochs += 1
        elif self._better(metric):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            lrs = []
            for g in _groups(self.optimizer):
                old = float(g["lr"])
                new = max(old * self.factor, self.min_lr)
                lrs.append(new if old - new > self.eps else old)
            self._set(lrs)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        else:
            self._last_lr = [float(g["lr"]) for g in _groups(self.optimizer)]
