"""Learning-rate schedules, PyTorch-shaped (also ``fastnn.optim.lr_scheduler``).

Build one on an optimizer, call ``scheduler.step()`` once per epoch after
training it (``ReduceLROnPlateau.step(metric)`` takes the monitored value),
or pass it to ``fit(..., scheduler=...)``, which does that. A schedule sets
``group["lr"]`` in each of ``optimizer.param_groups`` (an optimizer without
parameter groups: its ``lr``); the starting rates are the groups' rates when
the schedule is built. ``get_last_lr()`` lists the current rates;
``state_dict()``/``load_state_dict()`` save and restore the schedule.

A group added to the optimizer later (``add_param_group``) is scheduled too,
from the next ``step()`` on: its rate at that point is its base rate, and
the schedule starts for it at the epoch it joined (StepLR decays it every
``step_size`` epochs from then; a cosine runs its whole course from then;
ReduceLROnPlateau reduces it with the others). PyTorch leaves such a group
unscheduled (or fails) in most schedules.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
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


def _lr_list(name, value, n):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        raise TypeError(f"state[{name!r}] must be a list of learning rates, got {type(value).__name__}")
    if len(value) != n:
        raise ValueError(f"state[{name!r}] has {len(value)} rates; this optimizer has {n} param groups")
    return [_number(f"state[{name!r}][{i}]", v, lo=0) for i, v in enumerate(value)]


class LRScheduler:
    """Base class: ``_lr(base, t)`` gives one group's rate ``t`` steps after
    it joined (``lr_at(epoch)``: every group's rate after ``epoch`` steps).
    ``starts[i]``: the epoch group ``i`` joined (0 unless added later)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = [float(g["lr"]) for g in _groups(optimizer)]
        self.starts = [0] * len(self.base_lrs)
        self.last_epoch = 0
        self._last_lr = list(self.base_lrs)

    def _lr(self, base, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def lr_at(self, epoch):
        return [self._lr(b, epoch - s) for b, s in zip(self.base_lrs, self.starts)]

    def _adopt_new_groups(self):
        """Schedule groups added to the optimizer since the last step, from their current rate."""
        groups = _groups(self.optimizer)
        for g in groups[len(self.base_lrs):]:
            self.base_lrs.append(float(g["lr"]))
            self.starts.append(self.last_epoch)
            self._last_lr.append(float(g["lr"]))
        return groups

    def step(self):
        groups = self._adopt_new_groups()
        lrs = self.lr_at(self.last_epoch + 1)  # may raise: then the rates and the epoch are unchanged
        if len(lrs) != len(groups):
            raise ValueError(f"{type(self).__name__}.lr_at gave {len(lrs)} rates for {len(groups)} param groups")
        self.last_epoch += 1
        self._set(lrs)

    def _set(self, lrs):
        for g, lr in zip(_groups(self.optimizer), lrs):
            g["lr"] = lr
        self._last_lr = list(lrs)

    def get_last_lr(self) -> list:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` of the same kind of schedule; every value
        is checked (as the constructor checks it) before anything changes."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        state = dict(state)
        if "starts" not in state and isinstance(state.get("base_lrs"), (list, tuple)):
            state["starts"] = [0] * len(state["base_lrs"])  # a state saved before groups could join later
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state is not a {type(self).__name__} state: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        self._check_state(state)
        for k, v in state.items():
            if isinstance(v, (list, tuple, np.ndarray)):
                state[k] = list(v)  # not shared with the given state
        self.__dict__.update(state)
        self._set(self._last_lr)

    def _check_state(self, state):
        # The hyperparameters through the constructor's own checks, on a stand-in optimizer.
        args = [p for p in inspect.signature(type(self).__init__).parameters.values()
                if p.name not in ("self", "optimizer")]
        if all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name in state for p in args):
            type(self)(types.SimpleNamespace(lr=1.0), **{p.name: state[p.name] for p in args})
        last = _number("state['last_epoch']", state["last_epoch"], lo=0, integer=True)
        n = len(_groups(self.optimizer))
        _lr_list("base_lrs", state["base_lrs"], n)
        _lr_list("_last_lr", state["_last_lr"], n)
        starts = state["starts"]
        if not isinstance(starts, (list, tuple)) or len(starts) != n:
            raise ValueError(f"state['starts'] must list the epoch each of the {n} param groups joined")
        for i, v in enumerate(starts):
            _number(f"state['starts'][{i}]", v, lo=0, hi=last, integer=True)


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _number("step_size", step_size, lo=1, integer=True)
        self.gamma = _number("gamma", gamma, lo=0, lo_open=True)
        super().__init__(optimizer)

    def _lr(self, base, t):
        try:
            lr = base * self.gamma ** (t // self.step_size)
        except OverflowError:
            lr = math.inf
        if not math.isfinite(lr):
            raise ValueError(f"StepLR with gamma={self.gamma} takes the rate {base} past the float range "
                             f"after {t} epochs; use a gamma nearer 1 or fewer epochs")
        return lr


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

    def _lr(self, base, epoch):
        w = self.warmup_epochs
        if epoch < w:
            return base * (self.warmup_start_factor + (1 - self.warmup_start_factor) * epoch / w)
        t = min(epoch - w, self.T_max - w) / (self.T_max - w)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * t)) / 2


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

    def _check_state(self, state):
        super()._check_state(state)
        if state["best"] is not None:
            _number("state['best']", state["best"])
        for k in ("num_bad_epochs", "cooldown_counter"):
            _number(f"state[{k!r}]", state[k], lo=0, integer=True)

    def step(self, metric):
        if isinstance(metric, (str, bytes, bool, np.bool_)) or metric is None:
            raise TypeError(f"metric must be a number, got {type(metric).__name__}")
        try:
            metric = float(metric)
        except (TypeError, ValueError):
            raise TypeError(f"metric must be a number, got {type(metric).__name__}") from None
        self._adopt_new_groups()
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
