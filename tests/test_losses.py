"""fastnn.kernels.losses against fastnn.reference.losses, the references
against finite differences, the modules against PyTorch (when installed),
and the losses' argument checks."""

import numpy as np
import pytest

from fastnn import functional as F
from fastnn import nn
from fastnn.kernels import losses as K
from fastnn.reference import losses as R

from _helpers import (DTYPE_IDS, DTYPES, SHAPES, assert_close, assert_grad_close, check_loss_hands_over_its_gradient,
                      check_loss_keeps_its_targets, numeric_grad, randn, rng_for, run_both)

KINDS = ("mse", "l1", "huber", "bce_logits")
MODULES = {"mse": lambda **kw: nn.MSELoss(**kw), "l1": lambda **kw: nn.L1Loss(**kw),
           "huber": lambda **kw: nn.HuberLoss(0.7, **kw),
           "bce_logits": lambda **kw: nn.BCEWithLogitsLoss(**kw)}


def _inputs(kind, shape, dtype):
    rng = rng_for("loss", kind, shape, np.dtype(dtype).name)
    pred = randn(rng, shape, dtype, 3.0)
    if kind == "bce_logits":
        target = rng.random(shape).astype(dtype)
        target[:, ::2] = target[:, ::2] > 0.5  # hard labels and soft ones
        pos_weight = rng.uniform(0.2, 3.0, shape[1])
        return pred, target, {"pos_weight": pos_weight}
    return pred, randn(rng, shape, dtype), {"delta": 0.7} if kind == "huber" else {}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_matches_reference(kind, shape, dtype, reduction):
    pred, target, kw = _inputs(kind, shape, dtype)

    def fwd(backend):  # the loss as a 1-element array of the inputs' dtype: that dtype's tolerance
        return lambda p, t: np.array([F.pointwise_loss(kind, p, t, reduction=reduction,
                                                        backend=backend, **kw)[0]], dtype)

    def bwd(backend):
        return lambda p, t: F.pointwise_loss_backward(kind, p, t, reduction=reduction, backend=backend, **kw)

    run_both(fwd("numba"), fwd("numpy"), lambda: (pred, target), names=["loss"])
    (d,), _ = run_both(bwd("numba"), bwd("numpy"), lambda: (pred, target), names=["dpred"])
    assert d.dtype == dtype and d.shape == shape


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_reference_backward_matches_finite_differences(kind, reduction):
    pred, target, kw = _inputs(kind, (4, 5), np.float64)
    if kind == "l1":  # keep away from the kink at pred == target
        pred = target + np.where(pred >= 0, 0.5, -0.5) + pred * 0.1
    grad = F.pointwise_loss_backward(kind, pred, target, reduction=reduction, backend="numpy", **kw)
    num = numeric_grad(lambda: F.pointwise_loss(kind, pred, target, reduction=reduction,
                                                backend="numpy", **kw)[0], pred)
    assert_grad_close(grad, num, kind)


def test_bce_with_logits_is_stable_for_large_logits():
    x = np.array([[-100.0, 100.0, 0.0, 30.0]], np.float32)
    t = np.array([[1.0, 0.0, 1.0, 1.0]], np.float32)
    for backend in ("numba", "numpy"):
        loss = F.bce_with_logits(x, t, reduction="sum", backend=backend)
        np.testing.assert_allclose(loss, 200 + np.log(2), rtol=1e-6)
        d = F.pointwise_loss_backward("bce_logits", x, t, reduction="sum", backend=backend)
        np.testing.assert_allclose(d, [[-1, 1, -0.5, 0]], atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_modules_match_pytorch(kind, dtype, reduction):
    torch = pytest.importorskip("torch")
    pred, target, kw = _inputs(kind, (7, 3), dtype)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    theirs = {"mse": lambda: torch.nn.MSELoss(reduction=reduction),
              "l1": lambda: torch.nn.L1Loss(reduction=reduction),
              "huber": lambda: torch.nn.HuberLoss(reduction=reduction, delta=0.7),
              "bce_logits": lambda: torch.nn.BCEWithLogitsLoss(
                  reduction=reduction, pos_weight=torch.tensor(kw["pos_weight"], dtype=tdt))}[kind]()
    mine = MODULES[kind](reduction=reduction)
    if kind == "bce_logits":
        mine = nn.BCEWithLogitsLoss(pos_weight=kw["pos_weight"], reduction=reduction)
    xt = torch.tensor(pred, requires_grad=True)
    lt = theirs(xt, torch.tensor(target))
    lt.backward()
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for backend in ("numba", "numpy"):
        mine.backend = backend
        np.testing.assert_allclose(mine.forward(pred, target), lt.item(), rtol=rtol)
        np.testing.assert_allclose(mine.backward(), xt.grad.numpy(), rtol=rtol, atol=rtol * 1e-3)


def test_one_dimensional_predictions_and_module_backward_scale():
    pred = np.array([0.5, -1.0, 2.0])
    target = np.array([0.0, 0.0, 1.0])
    loss = nn.MSELoss()
    assert loss.forward(pred, target) == pytest.approx((0.25 + 1 + 1) / 3)
    np.testing.assert_allclose(loss.backward(), 2 * (pred - target) / 3)
    np.testing.assert_allclose(loss.backward(2.0), 4 * (pred - target) / 3)
    # the module keeps its own targets: refilling the caller's buffer changes nothing
    t2 = target.reshape(3, 1).copy()
    loss.forward(pred.reshape(3, 1), t2)
    t2[:] = 9
    np.testing.assert_allclose(loss.backward().ravel(), 2 * (pred - target) / 3)


def test_bad_arguments_are_named():
    p = np.zeros((4, 1), np.float32)
    with pytest.raises(ValueError, match=r"shape of the predictions \(4, 1\), got \(4,\).*reshape"):
        nn.MSELoss().forward(p, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="reduction"):
        nn.L1Loss(reduction="none")
    with pytest.raises(ValueError, match="delta"):
        nn.HuberLoss(delta=0)
    with pytest.raises(ValueError, match="pos_weight must be 1 finite"):
        nn.BCEWithLogitsLoss(pos_weight=[1.0, 2.0]).forward(p, np.ones((4, 1), np.float32))
    with pytest.raises(ValueError, match="pos_weight"):
        nn.BCEWithLogitsLoss(pos_weight=[-1.0])
    with pytest.raises(TypeError, match="float32"):
        nn.MSELoss().forward(np.zeros((4, 1), np.int64), p)
    with pytest.raises(RuntimeError, match="before forward"):
        nn.HuberLoss().backward()
    # integer 0/1 targets are accepted for BCE (converted to the logits' dtype)
    assert nn.BCEWithLogitsLoss().forward(p, np.ones((4, 1), np.int64)) == pytest.approx(np.log(2))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_log1p_unit_is_within_four_ulp_of_log1p(dtype):
    """BCE-with-logits' log1p(exp(-|x|)) on [0, 1], vectorisable (kernels._math.log1p_unit),
    with the kernels' compile flags (fastmath may reorder its last sums: up to 3 ulp
    measured), against float64 np.log1p."""
    from numba import njit

    from fastnn._config import NJIT_FLAGS
    from fastnn.kernels._math import log1p_unit

    @njit(**{**NJIT_FLAGS, "cache": False})
    def evaluate(v, out):
        for i in range(v.shape[0]):
            out[i] = log1p_unit(v[i])

    edge = 0.41421356237309503  # sqrt(2) - 1, where the two branches meet
    v = np.concatenate([np.linspace(0, 1, 200_001), np.geomspace(1e-30, 1, 20_001),
                        [edge, np.nextafter(edge, 0), np.nextafter(edge, 1), 0.5, 1.0]]).astype(dtype)
    out = np.empty_like(v)
    evaluate(v, out)
    ref = np.log1p(v.astype(np.float64))
    ulp = np.spacing(np.maximum(np.abs(ref), np.finfo(dtype).tiny).astype(dtype)).astype(np.float64)
    assert np.all(np.abs(out - ref) <= 4 * ulp)
    assert out[0] == 0.0
    nan = np.array([np.nan], dtype)
    evaluate(nan, out[:1])
    assert np.isnan(out[0])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_loss_grad_in_one_pass_matches_reference_and_the_two_kernels(kind, shape, dtype, reduction):
    """The loss modules' training forward: loss and gradient in one pass."""
    pred, target, kw = _inputs(kind, shape, dtype)
    delta, pos_weight = kw.get("delta", 1.0), kw.get("pos_weight")

    def both(backend):
        def run(p, t):
            loss, d, *_ = F._pointwise_loss_grad(kind, p, t, reduction, delta, pos_weight, backend)
            return np.array([loss], dtype), d
        return run

    (loss, d), _ = run_both(both("numba"), both("numpy"), lambda: (pred, target), names=["loss", "dpred"])
    assert d.dtype == dtype and d.shape == shape
    ulp = float(np.finfo(dtype).eps)
    assert loss[0] == pytest.approx(F.pointwise_loss(kind, pred, target, reduction=reduction, **kw)[0],
                                    rel=8 * ulp)
    np.testing.assert_array_equal(  # the same float operations per element as the backward kernel
        d, F.pointwise_loss_backward(kind, pred, target, reduction=reduction, **kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("n", [37, 300])
@pytest.mark.parametrize("width", [7, 19])
def test_bce_kernels_cover_every_row_of_uneven_chunks(width, n, build, dtype):
    """float32 rows of 16 and more go in chunks with a buffer (2 chunks of
    18-19 rows at n = 37, 16 at n = 300), shorter rows and float64 one by
    one: every row's loss and gradient against the reference, both builds."""
    pred, target, kw = _inputs("bce_logits", (n, width), dtype)
    pos_weight = kw["pos_weight"].astype(dtype)
    fwd = getattr(K.bce_logits_forward, build)
    fwd_bwd = getattr(K.bce_logits_forward_backward, build)
    losses, losses_ref = np.full(n, np.nan), np.full(n, np.nan)
    fwd(losses, pred, target, pos_weight)
    R.bce_logits_forward(losses_ref, pred, target, pos_weight)
    assert_close(losses, losses_ref, "losses", dtype=dtype)
    d, d_ref = np.full_like(pred, np.nan), np.full_like(pred, np.nan)
    losses2, kept = np.full(n, np.nan), np.full_like(target, np.nan)
    fwd_bwd(d, losses2, kept, pred, target, pos_weight, 0.5)
    R.bce_logits_backward(d_ref, pred, target, pos_weight, 0.5)
    np.testing.assert_array_equal(losses2, losses)
    assert_close(d, d_ref, "dlogits")
    np.testing.assert_array_equal(kept, target)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_kernels_copy_the_targets_unless_kept_is_target(kind, build, dtype):
    """The training forward's kernel writes the module's copy of the targets
    in its pass; given the targets themselves as ``kept`` it writes none:
    the same losses and gradient either way, in both builds."""
    pred, target, kw = _inputs(kind, (37, 19), dtype)
    extra = (0.7,) if kind == "huber" else (kw["pos_weight"].astype(dtype),) if kind == "bce_logits" else ()
    fwd_bwd = getattr(getattr(K, kind + "_forward_backward"), build)
    d, losses, kept = np.full_like(pred, np.nan), np.full(37, np.nan), np.full_like(target, np.nan)
    fwd_bwd(d, losses, kept, pred, target, *extra, 0.5)
    np.testing.assert_array_equal(kept, target)
    d_ref, losses_ref, kept_ref = np.empty_like(pred), np.empty(37), np.empty_like(target)
    getattr(R, kind + "_forward_backward")(d_ref, losses_ref, kept_ref, pred, target, *extra, 0.5)
    assert_close(d, d_ref, "dpred")
    assert_close(losses, losses_ref, "losses", dtype=dtype)
    np.testing.assert_array_equal(kept_ref, target)
    before = target.copy()
    d2, losses2 = np.full_like(pred, np.nan), np.full(37, np.nan)
    fwd_bwd(d2, losses2, target, pred, target, *extra, 0.5)
    np.testing.assert_array_equal(target, before)
    np.testing.assert_array_equal(d2, d)
    np.testing.assert_array_equal(losses2, losses)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_loss_grad_matches_finite_differences(kind):
    pred, target, kw = _inputs(kind, (4, 5), np.float64)
    if kind == "l1":  # keep away from the kink at pred == target
        pred = target + np.where(pred >= 0, 0.5, -0.5) + pred * 0.1
    fwd_bwd = getattr(R, kind + "_forward_backward")
    extra = tuple(kw.values())  # delta or pos_weight
    d, losses = np.empty_like(pred), np.empty(4)

    def loss():
        fwd_bwd(np.empty_like(pred), losses, target, pred, target, *extra, 1.0)
        return float(losses.sum())

    fwd_bwd(d, losses, target, pred, target, *extra, 1.0)
    assert_grad_close(d, numeric_grad(loss, pred), "dpred")


@pytest.mark.parametrize("kind", KINDS)
def test_modules_keep_their_targets_when_the_caller_refills_its_buffer(kind):
    pred, target, kw = _inputs(kind, (48, 7), np.float32)  # three batches of 16 rows
    kw = kw if kind == "bce_logits" else {}  # (Huber's delta is in MODULES)
    check_loss_keeps_its_targets(lambda: MODULES[kind](**kw), np.split(pred, 3), np.split(target, 3),
                                 rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("kind", KINDS)
def test_module_training_and_eval_forwards_give_the_same_backward(kind, backend):
    pred, target, kw = _inputs(kind, (16, 7), np.float32)
    mod = nn.BCEWithLogitsLoss(**kw) if kind == "bce_logits" else MODULES[kind]()
    mod.backend = backend
    check_loss_hands_over_its_gradient(mod, (pred, target), rtol=1e-6, atol=1e-12)
    flat = MODULES[kind]()  # (N,) predictions come back in their own shape
    flat.forward(pred[:, 0], target[:, 0])
    assert flat.backward().shape == (16,)


@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_backward_kernels_in_place_equal_out_of_place(kind, dtype, build):
    """Each backward kernel with dpred = pred or dpred = target (its own
    loop, ``_config.same_data``): the same values, in both builds."""
    pred, target, kw = _inputs(kind, (37, 19), dtype)
    extra = (0.7,) if kind == "huber" else (kw["pos_weight"].astype(dtype),) if kind == "bce_logits" else ()
    bwd = getattr(getattr(K, kind + "_backward"), build)
    want = np.empty_like(pred)
    bwd(want, pred, target, *extra, 0.5)
    into_pred = pred.copy()
    bwd(into_pred, into_pred, target, *extra, 0.5)
    np.testing.assert_array_equal(into_pred, want)
    into_target = target.copy()
    bwd(into_target, pred, into_target, *extra, 0.5)
    np.testing.assert_array_equal(into_target, want)


@pytest.mark.parametrize("kind", KINDS)
def test_refused_forward_leaves_the_module_as_it_was(kind):
    """Bad targets are refused before the module's state (its copy of the
    last targets, its predictions) changes: the next backward is the last
    good forward's."""
    pred, target, kw = _inputs(kind, (16, 7), np.float32)
    mod = nn.BCEWithLogitsLoss(**kw) if kind == "bce_logits" else MODULES[kind]()
    mod.forward(pred, target)
    want = mod.backward()
    with pytest.raises(ValueError, match="target must have the shape"):
        mod.forward(pred, target[:, :6])
    with pytest.raises(TypeError):
        mod.forward(pred, target.astype(object))
    np.testing.assert_array_equal(mod.backward(), want)
