"""Metrics for ``fit(..., metrics=[...])`` and ``evaluate``.

A metric is ``fn(outputs, y) -> float``, the mean over the batch's samples
(``fit`` weights batches by their size, so the epoch value is the mean over
the epoch). By name:

* ``"accuracy"``: for ``SoftmaxCrossEntropy`` the argmax of the outputs
  against integer labels (or the argmax of one-hot/soft targets); for
  ``BCEWithLogitsLoss`` it means ``"binary_accuracy"``.
* ``"binary_accuracy"``: ``outputs > 0`` (logits) against ``y >= 0.5``,
  averaged over the columns (multi-label) and the samples.
* ``"mae"``, ``"mse"``: mean absolute / squared error over all elements.

A callable may be given instead of a name; its ``__name__`` names it in the
history. Which metrics are maximised: the accuracies (``MAXIMIZE``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "binary_accuracy", "mae", "mse", "get", "defaults_for", "MAXIMIZE"]


def _as_like(y, out):
    """y in out's shape ((N,) targets of a one-column output as (N, 1)); never broadcast."""
    y = np.asarray(y)
    if y.ndim == 1 and out.ndim == 2 and out.shape[1] == 1:
        y = y.reshape(-1, 1)
    if y.shape != np.shape(out):
        raise ValueError(f"targets must have the outputs' shape {np.shape(out)}, got {y.shape}")
    return y


def accuracy(outputs, y) -> float:
    """Fraction of rows whose argmax is the label (or the target's argmax)."""
    outputs, y = np.asarray(outputs), np.asarray(y)
    if outputs.ndim != 2 or y.ndim not in (1, 2) or len(y) != len(outputs):
        raise ValueError(f"accuracy needs outputs (N, C) and labels (N,) or targets (N, C), "
                         f"got shapes {outputs.shape} and {y.shape}")
    pred = outputs.argmax(axis=1)
    labels = y if y.ndim == 1 else y.argmax(axis=1)
    return np.count_nonzero(pred == labels) / len(pred)


def binary_accuracy(outputs, y) -> float:
    """Fraction of elements where ``logit > 0`` agrees with ``target >= 0.5``."""
    y = _as_like(y, outputs)
    return np.count_nonzero((outputs > 0) == (y >= 0.5)) / outputs.size


def mae(outputs, y) -> float:
    return float(np.abs(outputs - _as_like(y, outputs)).mean(dtype=np.float64))


def mse(outputs, y) -> float:
    d = outputs - _as_like(y, outputs)
    return float(np.mean(d * d, dtype=np.float64))


_BY_NAME = {"accuracy": accuracy, "binary_accuracy": binary_accuracy, "mae": mae, "mse": mse}
MAXIMIZE = frozenset({"accuracy", "binary_accuracy"})


def get(metric, loss_fn=None):
    """(name, fn) for a metric name or callable; ``"accuracy"`` follows the loss."""
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    if not isinstance(metric, str):
        raise TypeError(f"metrics must be names or callables, got {type(metric).__name__}")
    if metric not in _BY_NAME:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(_BY_NAME)} (or pass a callable)")
    fn = _BY_NAME[metric]
    if metric == "accuracy" and getattr(loss_fn, "binary", False):
        fn = binary_accuracy
    return metric, fn


def defaults_for(loss_fn) -> tuple:
    """The metrics ``fit`` tracks when none are given: accuracy for
    classification losses (``loss_fn.classification``), none otherwise."""
    return ("accuracy",) if getattr(loss_fn, "classification", False) else ()
