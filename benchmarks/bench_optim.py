"""Optimizer updates (SGD, SGD with momentum, Adam/AdamW): numba vs NumPy.

Each update is one in-place pass over a flat parameter of the case's
N * D elements and its state; the timed calls keep updating the same
arrays (small steps, so they stay finite).

Below those: the seed network's six parameters updated by one call per
parameter against one multi-tensor call, and the Adam kernel on the first
layer's state after real training (Fashion-MNIST), on random state and on
mostly subnormal moments.
"""

import math

import numpy as np
import pytest

import fastnn
from fastnn import nn

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


# ------------------------------------------- all parameters in one call, and real state

SEED_SHAPES = [(784, 256), (256,), (256, 128), (128,), (128, 10), (10,)]
ADAM_ARGS = (LR / (1 - BETA1**STEP), BETA1, BETA2, EPS, math.sqrt(1 - BETA2**STEP), 0.0, 1.0)


def _seed_state(seed=0):
    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(s)) for s in SEED_SHAPES]
    p = [rng.standard_normal(n, dtype=np.float32) * np.float32(0.05) for n in sizes]
    m = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    v = [np.abs(rng.standard_normal(n, dtype=np.float32)) * np.float32(1e-6) for n in sizes]
    g = [rng.standard_normal(n, dtype=np.float32) * np.float32(0.01) for n in sizes]
    return p, m, v, g


@pytest.mark.parametrize("layout", ["per_parameter", "multi_tensor"])
def test_adam_seed_network_layout(benchmark, layout):
    """The Adam update of the seed network's six parameters (float32): one
    ``adam_update`` call per parameter (fastnn before the multi-tensor
    kernel) against one ``multi_adam_update`` call for all of them."""
    p, m, v, g = _seed_state()
    sizes = [a.size for a in p]
    group_of = np.zeros(len(p), dtype=np.int64)
    hyper = np.array([ADAM_ARGS], dtype=np.float64)
    chunks = K.chunk_table(sizes)
    tuples = (tuple(p), tuple(m), tuple(v), tuple(g))

    def per_parameter():
        for arrays in zip(p, m, v, g):
            K.adam_update(*arrays, *ADAM_ARGS, work=4 * arrays[0].size)

    def multi_tensor():
        K.multi_adam_update(*tuples, group_of, hyper, chunks, work=4 * sum(sizes))

    # both give the same update (on copies), and both are compiled before timing
    a = [[x.copy() for x in arrays] for arrays in (p, m, v, g)]
    b = [[x.copy() for x in arrays] for arrays in (p, m, v, g)]
    for arrays in zip(*a):
        K.adam_update(*arrays, *ADAM_ARGS, work=4 * arrays[0].size)
    K.multi_adam_update(*map(tuple, b), group_of, hyper, chunks, work=4 * sum(sizes))
    for x, y in zip(a[0], b[0]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    benchmark.group = "adam-seed-network-float32"
    benchmark.extra_info.update(layout=layout, parameters=len(p), elements=sum(sizes))
    benchmark(per_parameter if layout == "per_parameter" else multi_tensor)


@pytest.fixture(scope="module")
def trained_adam_state():
    """Adam's state of the seed network's first layer (784 x 256) after one
    epoch of ``fit`` on Fashion-MNIST (938 steps of 64): the first moments of
    inputs whose gradient stays zero decay by beta1 a step there (4% were
    subnormal before the kernels flushed them)."""
    from fastnn.data import load_mnist
    from fastnn.train import fit

    try:
        (X, y), _ = load_mnist(kind="fashion")
    except (OSError, ValueError) as exc:
        pytest.skip(f"Fashion-MNIST not installed ({exc})")
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)])
    opt = fastnn.optim.Adam(model.parameters(), lr=1e-3)
    fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=64, seed=0, progress=False)
    p = np.array(model.parameters()[0]).reshape(-1)
    st = opt.state[0]
    return p, st["exp_avg"].reshape(-1).copy(), st["exp_avg_sq"].reshape(-1).copy(), np.array(
        model.parameters()[0].grad).reshape(-1)


def _subnormal_state(n, seed=0):
    rng = np.random.default_rng(seed)
    tiny = np.finfo(np.float32).tiny
    p, m, v, g = (rng.standard_normal(n, dtype=np.float32) * np.float32(s) for s in (0.05, 1e-3, 1e-3, 0.01))
    v *= v
    dead = rng.random(n) < 0.9
    m[dead] = (rng.uniform(-1, 1, dead.sum()) * tiny).astype(np.float32)
    v[dead] = (rng.uniform(0, 1, dead.sum()) * tiny).astype(np.float32)
    g[dead] = 0
    return p, m, v, g


@pytest.mark.parametrize("state", ["trained", "random", "subnormal"])
def test_adam_first_layer_state(benchmark, trained_adam_state, state):
    """The serial Adam kernel on the first layer's 784 x 256 state: trained on
    Fashion-MNIST, random, and 90% subnormal moments (a state that an update
    without flush-to-zero leaves behind). Every round runs on a fresh copy,
    so no call cleans the state for the next."""
    n = 784 * 256
    if state == "trained":
        arrays = trained_adam_state
    elif state == "random":
        rng = np.random.default_rng(1)
        arrays = (rng.standard_normal(n, dtype=np.float32) * np.float32(0.05),
                  rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3),
                  np.abs(rng.standard_normal(n, dtype=np.float32)) * np.float32(1e-6),
                  rng.standard_normal(n, dtype=np.float32) * np.float32(0.01))
    else:
        arrays = _subnormal_state(n)
    m = arrays[1]
    tiny = np.finfo(np.float32).tiny
    benchmark.group = "adam-first-layer-state-784x256-float32"
    benchmark.extra_info.update(
        state=state, zero_moments=float(np.mean(m == 0)),
        subnormal_moments=float(np.mean((m != 0) & (np.abs(m) < tiny))))
    K.adam_update.serial(*[a.copy() for a in arrays], *ADAM_ARGS)
    benchmark.pedantic(K.adam_update.serial, setup=lambda: (tuple(a.copy() for a in arrays) + ADAM_ARGS, {}),
                       rounds=50, warmup_rounds=2)
