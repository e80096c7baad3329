"""Optimizer updates (SGD, SGD with momentum, Adam/AdamW): numba vs NumPy.

Each update is one in-place pass over a flat parameter of the case's
N * D elements and its state; the timed calls keep updating the same
arrays (small steps, so they stay finite).
"""

import numpy as np
import pytest

K = pytest.importorskip("fastnn.kernels.optim")
R = pytest.importorskip("fastnn.reference.optim")

LR, MOMENTUM, WD = 1e-3, 0.9, 1e-4
BETA1, BETA2, EPS, STEP = 0.9, 0.999, 1e-8, 10


def _param_grad(randn, case):
    return randn(*case.shape).reshape(-1), randn(*case.shape, scale=0.1).reshape(-1)


def test_sgd_update(compare_and_time, randn, case):
    p, g = _param_grad(randn, case)
    compare_and_time("sgd_update", K.sgd_update, R.sgd_update, {"p": p}, (g, LR, WD))


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy_ball", "nesterov"])
def test_sgd_momentum_update(compare_and_time, randn, case, nesterov):
    p, g = _param_grad(randn, case)
    buf = randn(p.size, scale=0.1)
    op = "sgd_nesterov_update" if nesterov else "sgd_momentum_update"
    compare_and_time(op, K.sgd_momentum_update, R.sgd_momentum_update, {"p": p, "buf": buf},
                     (g, LR, MOMENTUM, WD, nesterov))


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_adam_update(compare_and_time, randn, case, decoupled):
    p, g = _param_grad(randn, case)
    m = randn(p.size, scale=0.01)
    v = np.abs(randn(p.size, scale=0.01))
    step_size = LR / (1 - BETA1**STEP)
    bc2_sqrt = np.sqrt(1 - BETA2**STEP)
    wd, decay_scale = (0.0, 1 - LR * WD) if decoupled else (WD, 1.0)
    op = "adamw_update" if decoupled else "adam_update"
    compare_and_time(op, K.adam_update, R.adam_update, {"p": p, "m": m, "v": v},
                     (g, step_size, BETA1, BETA2, EPS, bc2_sqrt, wd, decay_scale))
