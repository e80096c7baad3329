"""fastnn.kernels.optim against fastnn.reference.optim, the optimizers against
hand-computed steps and (when installed) PyTorch, and the regularisation and
clipping helpers."""

import math

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim
from fastnn.kernels import optim as K
from fastnn.reference import optim as R

from _helpers import DTYPE_IDS, DTYPES, assert_close, randn, rng_for, run_both

# a small odd size, and one above PARALLEL_MIN_WORK (the parallel build)
SIZES = (7, 70001)


def _kernel(fn):
    return lambda *a: fn(*a, work=a[0].size)


def _state(n, dtype, k):
    rng = rng_for("optim", n, np.dtype(dtype).name, k)
    arrays = [randn(rng, (n,), dtype) for _ in range(k)]
    for a in arrays[1:]:
        a *= 0.1
    return arrays, randn(rng, (n,), dtype)


# ------------------------------------------------------ kernels vs. reference


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", SIZES)
def test_sgd_kernels_match_reference(n, dtype):
    (p,), g = _state(n, dtype, 1)
    run_both(_kernel(K.sgd_update), R.sgd_update, lambda: (p, g, 0.1, 0.01), names=["p"], n_out=1)
    (p, buf), g = _state(n, dtype, 2)
    for nesterov in (False, True):
        run_both(_kernel(K.sgd_momentum_update), R.sgd_momentum_update,
                 lambda: (p, buf, g, 0.1, 0.9, 0.01, nesterov), names=["p", "buf"], n_out=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", SIZES)
def test_adam_kernel_matches_reference(n, dtype):
    (p, m, v), g = _state(n, dtype, 3)
    v = np.abs(v)
    # Adam (coupled L2) at step 3, then AdamW (decoupled) at step 1.
    for step, l2, scale in ((3, 0.01, 1.0), (1, 0.0, 1 - 1e-3 * 0.01)):
        args = (p, m, v, g, 1e-3 / (1 - 0.9 ** step), 0.9, 0.999, 1e-8,
                math.sqrt(1 - 0.999 ** step), l2, scale)
        run_both(_kernel(K.adam_update), R.adam_update, lambda: args,
                 names=["p", "m", "v"], n_out=3)


# ------------------------------------------------------ hand-written steps


def _param(values, dtype=np.float64):
    p = nn.Parameter(np.array(values, dtype=dtype))
    return p


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_adam_three_steps_by_hand(backend):
    p = _param([1.0, -2.0])
    opt = optim.Adam([p], lr=0.1, betas=(0.5, 0.75), eps=1e-8, weight_decay=0.1, backend=backend)
    grads = ([0.5, 1.0], [-1.0, 2.0], [0.25, 0.0])
    w = [1.0, -2.0]
    m = [0.0, 0.0]
    v = [0.0, 0.0]
    for t, g in enumerate(grads, start=1):
        p.grad[:] = g
        opt.step()
        for i in range(2):
            d = g[i] + 0.1 * w[i]
            m[i] = 0.5 * m[i] + 0.5 * d
            v[i] = 0.75 * v[i] + 0.25 * d * d
            mhat = m[i] / (1 - 0.5 ** t)
            vhat = v[i] / (1 - 0.75 ** t)
            w[i] -= 0.1 * mhat / (math.sqrt(vhat) + 1e-8)
        np.testing.assert_allclose(p, w, rtol=1e-12, err_msg=f"step {t}")
    # The first Adam step moves each weight by about lr, whatever the gradient's scale.
    q = _param([0.0, 0.0])
    q.grad[:] = [1e-3, -50.0]
    optim.Adam([q], lr=0.01, backend=backend).step()
    np.testing.assert_allclose(q, [-0.01, 0.01], rtol=1e-4)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_adamw_decay_is_decoupled(backend):
    # With a zero gradient Adam's update is 0 and only the decay acts: p *= 1 - lr * wd.
    p = _param([2.0, -4.0])
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5, backend=backend)
    opt.step()
    opt.step()
    np.testing.assert_allclose(p, np.array([2.0, -4.0]) * 0.95 ** 2, rtol=1e-12)
    # Adam's coupled L2 instead goes through the moments: the first step is about -lr * sign(p).
    q = _param([2.0, -4.0])
    optim.Adam([q], lr=0.1, weight_decay=0.5, backend=backend).step()
    np.testing.assert_allclose(q, [1.9, -3.9], rtol=1e-6)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_sgd_steps_by_hand(backend):
    g1, g2 = 1.0, -0.5
    # plain, with weight decay
    p = _param([1.0])
    opt = optim.SGD([p], lr=0.1, weight_decay=0.2, backend=backend)
    p.grad[:] = g1
    opt.step()
    np.testing.assert_allclose(p, [1.0 - 0.1 * (1.0 + 0.2)], rtol=1e-12)
    # heavy ball: buf1 = g1, buf2 = 0.9 * g1 + g2
    p = _param([1.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, backend=backend)
    for g in (g1, g2):
        p.grad[:] = g
        opt.step()
    np.testing.assert_allclose(p, [1.0 - 0.1 * g1 - 0.1 * (0.9 * g1 + g2)], rtol=1e-12)
    # Nesterov: p -= lr * (g + mu * buf)
    p = _param([1.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, backend=backend)
    for g in (g1, g2):
        p.grad[:] = g
        opt.step()
    b1 = g1
    b2 = 0.9 * b1 + g2
    expected = 1.0 - 0.1 * (g1 + 0.9 * b1) - 0.1 * (g2 + 0.9 * b2)
    np.testing.assert_allclose(p, [expected], rtol=1e-12)


# ------------------------------------------------------------------- PyTorch

OPTIMIZERS = {
    "sgd": (optim.SGD, "SGD", dict(lr=0.05, weight_decay=0.01)),
    "momentum": (optim.SGD, "SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    "nesterov": (optim.SGD, "SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (optim.Adam, "Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    "adamw": (optim.AdamW, "AdamW", dict(lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_matches_pytorch(name, dtype):
    torch = pytest.importorskip("torch")
    ours_cls, torch_name, kw = OPTIMIZERS[name]
    rng = rng_for("torch", name)
    shapes = [(70001,), (5, 3)]  # one parallel, one serial kernel call
    init = [randn(rng, s, dtype) for s in shapes]
    grads = [[randn(rng, s, dtype) for s in shapes] for _ in range(5)]
    ours = [nn.Parameter(a) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt = ours_cls(ours, **kw)
    topt = getattr(torch.optim, torch_name)(theirs, **kw)
    for step_grads in grads:
        for p, t, g in zip(ours, theirs, step_grads):
            p.grad[...] = g
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs):
        assert_close(p, t.detach().numpy(), f"{name} parameter", scale=5)
    if name.startswith("adam"):
        tstate = topt.state[theirs[0]]
        assert_close(opt.state[0]["exp_avg"], tstate["exp_avg"].numpy(), "exp_avg", scale=5)
        assert_close(opt.state[0]["exp_avg_sq"], tstate["exp_avg_sq"].numpy(), "exp_avg_sq", scale=5)


def test_clip_grad_norm_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = rng_for("clip-torch")
    ours = [nn.Parameter(randn(rng, s, np.float32)) for s in ((4, 3), (3,))]
    theirs = [torch.nn.Parameter(torch.from_numpy(np.array(p))) for p in ours]
    for p, t in zip(ours, theirs):
        p.grad[...] = randn(rng, p.shape, np.float32) * 3
        t.grad = torch.from_numpy(p.grad.copy())
    for max_norm in (100.0, 1.0):
        norm = optim.clip_grad_norm(ours, max_norm)
        tnorm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        assert norm == pytest.approx(float(tnorm), rel=1e-6)
        for p, t in zip(ours, theirs):
            assert_close(p.grad, t.grad.numpy(), "clipped grad")


# ---------------------------------------------------------------- API behaviour


def _model(dtype=np.float32):
    fastnn.manual_seed(3)
    return nn.Sequential([nn.Linear(6, 5, dtype=dtype), nn.ReLU(), nn.Linear(5, 3, dtype=dtype)])


def _fill_grads(params, seed):
    rng = np.random.default_rng(seed)
    for p in params:
        p.grad[...] = rng.standard_normal(p.shape)


def test_step_updates_in_place_without_new_state():
    model = _model()
    params = model.parameters()
    opt = optim.Adam(params, lr=0.01)
    before = [np.array(p) for p in params]
    state_ids = [(id(s["exp_avg"]), id(s["exp_avg_sq"])) for s in opt.state]
    _fill_grads(params, 0)
    opt.step()
    assert model.parameters()[0] is params[0]
    assert all(not np.array_equal(a, p) for a, p in zip(before, params))
    assert state_ids == [(id(s["exp_avg"]), id(s["exp_avg_sq"])) for s in opt.state]
    assert opt.step_count == 1


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam])
def test_numba_and_numpy_backends_agree(cls):
    kw = dict(lr=0.01, momentum=0.9) if cls is optim.SGD else dict(lr=0.01)
    a, b = _model(), _model()
    oa = cls(a.parameters(), backend="numba", **kw)
    ob = cls(b.parameters(), backend="numpy", **kw)
    for seed in range(3):
        _fill_grads(a.parameters(), seed)
        _fill_grads(b.parameters(), seed)
        oa.step()
        ob.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert_close(pa, pb, "parameter")


def test_replaced_grad_array_is_used():
    p = _param([1.0, 1.0])
    opt = optim.SGD([p], lr=1.0)
    p.grad = np.array([0.5, -0.5])
    opt.step()
    np.testing.assert_array_equal(p, [0.5, 1.5])
    p.grad = np.zeros(3)
    with pytest.raises(ValueError, match=r"params\[0\]\.grad"):
        opt.step()


def test_zero_grad():
    model = _model()
    _fill_grads(model.parameters(), 1)
    optim.SGD(model.parameters(), lr=0.1).zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("cls,kw", [(optim.Adam, {}), (optim.AdamW, {}),
                                    (optim.SGD, dict(lr=0.1, momentum=0.5, nesterov=True))])
def test_state_dict_round_trip_continues_identically(cls, kw):
    a, b = _model(), _model()
    oa = cls(a.parameters(), **kw)
    for seed in range(2):
        _fill_grads(a.parameters(), seed)
        oa.step()
    b.load_state_dict(a.state_dict())
    ob = cls(b.parameters(), **{**kw, "lr": 0.5})
    ob.load_state_dict(oa.state_dict())
    assert ob.lr == oa.lr and ob.step_count == oa.step_count == 2
    for opt, model in ((oa, a), (ob, b)):
        _fill_grads(model.parameters(), 7)
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb)


def test_state_dict_is_a_copy_and_mismatches_are_listed():
    model = _model()
    opt = optim.Adam(model.parameters())
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][...] = 1
    assert not opt.state[0]["exp_avg"].any()
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    other = optim.Adam(nn.Linear(6, 4).parameters())
    with pytest.raises(ValueError, match=r"for 4 parameters, the optimizer has 2.*shape \(6, 5\) in the state"):
        other.load_state_dict(sd)
    with pytest.raises(ValueError, match="missing hyperparameters"):
        optim.Adam(model.parameters()).load_state_dict(optim.SGD(model.parameters(), 0.1).state_dict())


@pytest.mark.parametrize("make,match", [
    (lambda ps: optim.SGD(ps, lr=0), "lr"),
    (lambda ps: optim.SGD(ps, lr=-1), "lr"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.1), "momentum"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda ps: optim.Adam(ps, eps=0), "eps"),
    (lambda ps: optim.AdamW(ps, weight_decay=-0.01), "weight_decay"),
    (lambda ps: optim.Adam(ps, lr=float("nan")), "lr"),
])
def test_bad_hyperparameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make(_model().parameters())


def test_bad_params_raise_type_error_with_hint():
    model = _model()
    for bad in ([], model, np.zeros(3), [np.zeros(3)], 5):
        with pytest.raises(TypeError, match="model.parameters()"):
            optim.Adam(bad)
    with pytest.raises(ValueError, match="more than once"):
        optim.Adam(model.parameters() * 2)
    with pytest.raises(TypeError, match="betas"):
        optim.Adam(model.parameters(), betas=0.9)
    with pytest.raises(ValueError, match="lr"):
        optim.Adam(model.parameters()).lr = 0


def test_generator_of_parameters_is_accepted():
    model = _model()
    opt = optim.SGD((p for p in model.parameters()), lr=0.1)
    assert len(opt.params) == 4


# ----------------------------------------------------- regularisation, clipping


def test_l2_loss_and_grad_are_the_seeds():
    rng = rng_for("l2")
    params = [nn.Parameter(randn(rng, s, np.float32)) for s in ((3, 4), (4,))]
    expected = 0.01 * sum(np.sum(np.asarray(p, np.float64) ** 2) for p in params) / 2
    assert optim.l2_loss(params, 0.01) == pytest.approx(expected, rel=1e-6)
    g = optim.l2_grad(params[0], 0.01)
    assert type(g) is np.ndarray and g.dtype == np.float32
    np.testing.assert_allclose(g, 0.01 * np.asarray(params[0]), rtol=1e-7)
    with pytest.raises(ValueError, match="lambda_"):
        optim.l2_loss(params, -1)


def test_l2_in_the_gradient_equals_sgd_weight_decay():
    a, b = _model(np.float64), _model(np.float64)
    _fill_grads(a.parameters(), 4)
    _fill_grads(b.parameters(), 4)
    optim.add_l2_grad(a.parameters(), 0.1)
    optim.SGD(a.parameters(), lr=0.1).step()
    optim.SGD(b.parameters(), lr=0.1, weight_decay=0.1).step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(pa, pb, rtol=1e-12)


def test_clip_grad_value_is_the_seeds_clip_in_place():
    p = _param([0.0, 0.0, 0.0, 0.0])
    grad = p.grad
    grad[:] = [-3.0, -0.5, 0.5, 2.0]
    optim.clip_grad_value([p], 1.0)
    assert p.grad is grad
    np.testing.assert_array_equal(grad, np.clip([-3.0, -0.5, 0.5, 2.0], -1, 1))
    with pytest.raises(ValueError, match="clip"):
        optim.clip_grad_value([p], 0)


def test_clip_grad_norm_global_norm():
    p, q = _param([0.0, 0.0]), _param([0.0])
    p.grad[:] = [3.0, 0.0]
    q.grad[:] = [4.0]
    norm = optim.clip_grad_norm([p, q], 1.0)
    assert norm == 5.0
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(p.grad, [3 * scale, 0.0], rtol=1e-12)
    np.testing.assert_allclose(q.grad, [4 * scale], rtol=1e-12)
    # under the limit: untouched
    p.grad[:] = [0.3, 0.4]
    assert optim.clip_grad_norm([p], 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(p.grad, [0.3, 0.4])
    assert optim.clip_grad_norm([p], 0.1, norm_type=math.inf) == pytest.approx(0.4)


def test_clip_grad_norm_non_finite():
    p = _param([0.0, 0.0])
    p.grad[:] = [np.nan, 1.0]
    with pytest.raises(FloatingPointError, match="non-finite"):
        optim.clip_grad_norm([p], 1.0, error_if_nonfinite=True)
    assert math.isnan(optim.clip_grad_norm([p], 1.0))
    assert np.isnan(p.grad).all()
