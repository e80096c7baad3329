"""Pointwise losses (MSE, L1, Huber, BCE with logits): numba vs NumPy,
forward (per-row sums) and backward (mean reduction). Shapes are (N, C)."""

import numpy as np
import pytest

from fastnn.kernels import losses as K
from fastnn.reference import losses as R

SHAPES = {"small": (64, 10), "medium": (1024, 1000), "large": (4096, 1000)}
KINDS = ("mse", "l1", "huber", "bce_logits")


def _inputs(randn, rng, case, kind):
    pred = randn(*case.shape, scale=3.0)
    if kind == "bce_logits":
        return pred, (rng.random(case.shape) > 0.5).astype(case.dtype), (np.ones(case.shape[1], case.dtype),)
    return pred, randn(*case.shape), (0.7,) if kind == "huber" else ()


@pytest.mark.parametrize("kind", KINDS)
def test_loss_forward(compare_and_time, randn, rng, case, kind):
    pred, target, extra = _inputs(randn, rng, case, kind)
    compare_and_time(f"{kind}_forward", getattr(K, kind + "_forward"), getattr(R, kind + "_forward"),
                     {"losses": np.empty(case.shape[0], np.float64)}, (pred, target) + extra)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_backward(compare_and_time, randn, rng, case, kind):
    pred, target, extra = _inputs(randn, rng, case, kind)
    scale = 1.0 / pred.size
    compare_and_time(f"{kind}_backward", getattr(K, kind + "_backward"), getattr(R, kind + "_backward"),
                     {"dpred": np.empty_like(pred)}, (pred, target) + extra + (scale,))


@pytest.mark.parametrize("kind", KINDS)
def test_loss_forward_backward(compare_and_time, randn, rng, case, kind):
    """The loss modules' training forward: loss, gradient and the module's
    copy of the targets in one pass."""
    pred, target, extra = _inputs(randn, rng, case, kind)
    compare_and_time(f"{kind}_forward_backward", getattr(K, kind + "_forward_backward"),
                     getattr(R, kind + "_forward_backward"),
                     {"dpred": np.empty_like(pred), "losses": np.empty(case.shape[0], np.float64),
                      "kept": np.empty_like(target)},
                     (pred, target) + extra + (1.0 / pred.size,))
