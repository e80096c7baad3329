"""fastnn.kernels.linear_act (Linear + activation + Dropout, fused) against
fastnn.reference.linear_act, the reference against finite differences, and
the fused Sequential path against the layer-by-layer one."""

import numpy as np
import pytest

import fastnn
from fastnn import nn
from fastnn.kernels import dropout as KD
from fastnn.kernels import linear_act as K
from fastnn.kernels._fpenv import FLUSHES_SUBNORMALS
from fastnn.kernels.activations import CODES, RELU
from fastnn.reference import linear_act as R

from _helpers import (DTYPE_IDS, DTYPES, assert_close, assert_close_up_to_flush, assert_grad_close,
                      assert_ieee_subnormals_here, numeric_grad, randn, rng_for, run_both,
                      subnormal_count, subnormal_inputs)

ACTS = sorted(CODES)
SHAPES = ((1, 5, 3), (5, 33, 17), (64, 784, 256))


def _inputs(shape, dtype, act, p, key):
    n, d, h = shape
    rng = rng_for("linear_act", shape, np.dtype(dtype).name, act, p, key)
    x = randn(rng, (n, d), dtype)
    W = randn(rng, (d, h), dtype, scale=1 / np.sqrt(d))
    b = randn(rng, (h,), dtype, scale=0.5)
    dy = randn(rng, (n, h), dtype)
    code = CODES[act]
    z = np.empty((0, 0) if code == RELU else (n, h), dtype)
    mask = np.empty((n, h) if p > 0 else (0, 0), np.uint8)
    hyper = (np.uint64(99), np.uint64(3), KD.dropout_threshold(p), 1.0 / (1.0 - p))
    return x, W, b, dy, code, z, mask, hyper


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(shape, act, p, dtype):
    x, W, b, dy, code, z, mask, hyper = _inputs(shape, dtype, act, p, "fwd")
    n, d, h = shape

    def fwd_args():
        return (np.empty((n, h), dtype), z.copy(), mask.copy(), x, W, b, code, 0.01, *hyper)

    (y, z_k, mask_k), (y_r, z_r, mask_r) = run_both(
        lambda *a: K.linear_act_forward(*a), R.linear_act_forward, fwd_args,
        names=["y", "z", "mask"], n_out=3)
    assert y.dtype == dtype

    def bwd_args():
        return (np.empty((n, d), dtype), np.empty((d, h), dtype), np.empty(h, dtype),
                np.empty((n, h), dtype), dy, x, W, y_r, z_r, mask_r, code, 0.01, hyper[-1])

    run_both(K.linear_act_backward, R.linear_act_backward, bwd_args,
             names=["dx", "dW", "db", "dz"], n_out=4)


@pytest.mark.parametrize("p", [0.0, 0.4])
@pytest.mark.parametrize("act", ACTS)
def test_reference_backward_matches_finite_differences(act, p):
    shape = (4, 6, 5)
    x, W, b, dy, code, z, mask, hyper = _inputs(shape, np.float64, act, p, "fd")
    n, d, h = shape

    def loss(x_, W_, b_):
        y = np.empty((n, h))
        R.linear_act_forward(y, z.copy(), mask.copy(), x_, W_, b_, code, 0.01, *hyper)
        return float((y * dy).sum())

    y = np.empty((n, h))
    R.linear_act_forward(y, z, mask, x, W, b, code, 0.01, *hyper)
    dx, dW, db, dz = np.empty((n, d)), np.empty((d, h)), np.empty(h), np.empty((n, h))
    R.linear_act_backward(dx, dW, db, dz, dy, x, W, y, z, mask, code, 0.01, hyper[-1])
    f = lambda: loss(x, W, b)  # noqa: E731  (numeric_grad perturbs x, W, b in place)
    assert_grad_close(dx, numeric_grad(f, x), "dx")
    assert_grad_close(dW, numeric_grad(f, W), "dW")
    assert_grad_close(db, numeric_grad(f, b), "db")


def _mlp(fuse, act, dtype, backend):
    fastnn.manual_seed(3)
    layers = [nn.Linear(20, 16, dtype=dtype), act(), nn.Dropout(0.25), nn.Linear(16, 12, dtype=dtype),
              nn.Dropout(0.5), nn.Linear(12, 4, dtype=dtype), act()]
    return nn.Sequential(layers, fuse=fuse, backend=backend)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU, nn.Tanh, nn.LeakyReLU])
def test_fused_sequential_equals_layer_by_layer(act, backend):
    rng = rng_for("fused-seq", act.__name__, backend)
    x = randn(rng, (9, 20), np.float32)
    y = rng.integers(0, 4, 9)
    results = []
    for fuse in (True, False):
        model = _mlp(fuse, act, np.float32, backend)
        ce = nn.SoftmaxCrossEntropy()
        for _ in range(3):  # several steps: dropout steps advance alike
            out = model.forward(x)
            loss = ce.forward(out, y)
            dx = model.backward(ce.backward())
        results.append((out.copy(), loss, dx.copy(), [p.grad.copy() for p in model.parameters()],
                        [d.step for d in model if isinstance(d, nn.Dropout)]))
    (o1, l1, dx1, g1, s1), (o2, l2, dx2, g2, s2) = results
    assert s1 == s2 == [3, 3]
    assert_close(o1, o2, "output")
    assert_close(l1, l2, "loss", dtype=np.float32)
    assert_close(dx1, dx2, "dx")
    for i, (a, b) in enumerate(zip(g1, g2)):
        assert_close(a, b, f"grad {i}")


def test_fused_block_masks_equal_standalone_dropout():
    fastnn.manual_seed(0)
    drop = nn.Dropout(0.5)
    model = nn.Sequential([nn.Linear(8, 32), drop])
    x = np.ones((6, 8), np.float32)
    model.forward(x)
    fused_mask = drop.mask.copy()
    alone = nn.Dropout(0.5, seed=drop.seed)
    alone.step = drop.step - 1
    alone.forward(np.ones((6, 32), np.float32), training=True)
    np.testing.assert_array_equal(fused_mask, alone.mask)


def test_eval_mode_skips_dropout_in_fused_block():
    model = _mlp(True, nn.ReLU, np.float32, "numba")
    x = randn(rng_for("eval"), (5, 20), np.float32)
    model.eval()
    a = model.forward(x).copy()
    b = model.forward(x)
    np.testing.assert_array_equal(a, b)
    assert [d.step for d in model if isinstance(d, nn.Dropout)] == [0, 0]


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_row_offset_gives_the_rows_of_the_whole_batch(act):
    """Rows r0.. of a batch, given row0=r0, get the outputs and masks of those
    rows in the whole batch (data-parallel training splits batches so)."""
    shape = (13, 9, 7)
    x, W, b, dy, code, z, mask, hyper = _inputs(shape, np.float32, act, 0.4, "row0")
    n, d, h = shape
    whole = np.empty((n, h), np.float32)
    R.linear_act_forward(whole, z.copy(), mask, x, W, b, code, 0.01, *hyper)
    r0 = 5
    for impl in (K, R):
        y_part = np.empty((n - r0, h), np.float32)
        m_part = np.empty((n - r0, h), np.uint8)
        z_part = z[r0:].copy() if z.size else z
        impl.linear_act_forward(y_part, z_part, m_part, x[r0:], W, b, code, 0.01, *hyper, r0)
        np.testing.assert_array_equal(m_part, mask[r0:])
        assert_close(y_part, whole[r0:], "y")


@pytest.mark.skipif(not FLUSHES_SUBNORMALS, reason="the kernels flush subnormals on x86-64 only")
@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_gelu_and_silu_rows_flush_subnormals(act, dtype, build):
    """The fused kernels' GELU and SiLU rows flush subnormals as the
    activation kernels do (no subnormal stored, the IEEE reference's values up
    to them), with dropout; the caller's floating-point mode is restored."""
    n, h = 64, 131
    x, dy = subnormal_inputs(dtype, n * h, act)
    x, dy = x.reshape(n, h), dy.reshape(n, h)
    code = CODES[act]
    b = np.zeros(h, dtype)
    hyper = (np.uint64(5), np.uint64(1), KD.dropout_threshold(0.25), 1.0 / 0.75)
    outs = []
    for fwd, bwd in ((getattr(K.bias_act_dropout_forward, build), getattr(K.bias_act_dropout_backward, build)),
                     (R.bias_act_dropout_forward, R.bias_act_dropout_backward)):
        y, z, mask = x.copy(), np.empty((n, h), dtype), np.empty((n, h), np.uint8)
        fwd(y, z, mask, b, code, 0.0, *hyper)
        dz, db = np.empty((n, h), dtype), np.empty(h, dtype)
        bwd(dz, db, dy, y, x, mask, code, 0.0, hyper[-1])
        outs.append((y, dz, mask))
    (y, dz, mask), (y_ref, dz_ref, mask_ref) = outs
    np.testing.assert_array_equal(mask, mask_ref)
    assert subnormal_count(y_ref) > 50 and subnormal_count(dz_ref) > 50  # the case is exercised
    assert_close_up_to_flush(y, y_ref, f"{act} y")
    assert_close_up_to_flush(dz, dz_ref, f"{act} dz")
    assert_ieee_subnormals_here()
