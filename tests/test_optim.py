"""fastnn.kernels.optim against fastnn.reference.optim, the optimizers against
hand-computed steps and (when installed) PyTorch, and the regularisation and
clipping helpers."""

import copy
import math

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim
from fastnn.kernels import optim as K
from fastnn.reference import optim as R

from _helpers import (DTYPE_IDS, DTYPES, assert_close, assert_ieee_subnormals_here, randn, rng_for,
                      run_both)

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


def _multi_state(dtype, sizes, n_state, seed):
    rng = rng_for("multi", np.dtype(dtype).name, seed)
    params = tuple(randn(rng, (n,), dtype) for n in sizes)
    grads = tuple(randn(rng, (n,), dtype) for n in sizes)
    states = [tuple(np.abs(randn(rng, (n,), dtype)) * 0.1 for n in sizes) for _ in range(n_state)]
    return params, states, grads


MULTI_SIZES = (70001, 7, 3000, 1, 16385)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_multi_adam_kernel_matches_reference(dtype):
    params, (m, v), grads = _multi_state(dtype, MULTI_SIZES, 2, 0)
    # two groups: Adam (coupled L2) at step 3 and AdamW (decoupled) at step 3
    hyper = np.array([[1e-3 / (1 - 0.9 ** 3), 0.9, 0.999, 1e-8, math.sqrt(1 - 0.999 ** 3), 0.01, 1.0],
                      [1e-2 / (1 - 0.8 ** 3), 0.8, 0.99, 1e-6, math.sqrt(1 - 0.99 ** 3), 0.0, 0.999]])
    group_of = np.array([0, 1, 0, 1, 1], dtype=np.int64)
    chunks = K.chunk_table(MULTI_SIZES, chunk=4096)
    assert chunks[:, 2].tolist()[-1] == MULTI_SIZES[-1]
    assert sum(hi - lo for _, lo, hi in chunks.tolist()) == sum(MULTI_SIZES)
    k_args = copy.deepcopy((params, m, v, grads))
    r_args = copy.deepcopy((params, m, v, grads))
    for work in (0, 10 ** 9):  # the serial and the parallel build
        K.multi_adam_update(*k_args, group_of, hyper, chunks, work=work)
        R.multi_adam_update(*r_args, group_of, hyper, chunks)
    for name, ks, rs in zip(("p", "m", "v"), k_args[:3], r_args[:3]):
        for t, (k, r) in enumerate(zip(ks, rs)):
            assert_close(k, r, f"{name}[{t}]")
    # the same as one adam_update per tensor
    single = copy.deepcopy((params, m, v, grads))
    for _ in range(2):
        for t in range(len(MULTI_SIZES)):
            R.adam_update(single[0][t], single[1][t], single[2][t], single[3][t], *hyper[group_of[t]])
    for t in range(len(MULTI_SIZES)):
        assert_close(k_args[0][t], single[0][t], f"p[{t}] against adam_update")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_multi_sgd_kernel_matches_reference(dtype):
    params, (buf,), grads = _multi_state(dtype, MULTI_SIZES, 1, 1)
    # plain (its buffers must not be touched), heavy ball, Nesterov
    buf = tuple(b if t != 1 else np.empty(0, dtype) for t, b in enumerate(buf))
    hyper = np.array([[0.1, 0.9, 0.01, 0.0], [0.05, 0.0, 0.1, 0.0], [0.2, 0.5, 0.0, 1.0]])
    group_of = np.array([0, 1, 2, 1, 2], dtype=np.int64)
    chunks = K.chunk_table(MULTI_SIZES, chunk=4096)
    k_args = copy.deepcopy((params, buf, grads))
    r_args = copy.deepcopy((params, buf, grads))
    for work in (0, 10 ** 9):
        K.multi_sgd_update(*k_args, group_of, hyper, chunks, work=work)
        R.multi_sgd_update(*r_args, group_of, hyper, chunks)
    for name, ks, rs in zip(("p", "buf"), k_args[:2], r_args[:2]):
        for t, (k, r) in enumerate(zip(ks, rs)):
            assert_close(k, r, f"{name}[{t}]")
    np.testing.assert_array_equal(k_args[1][3], buf[3], "a momentum-0 tensor's buffer was written")


# ------------------------------------------------------------ subnormals


def _subnormal_adam_state(dtype, n=50_000, seed=0):
    """Moments mostly subnormal (units whose gradient stayed zero), as after
    training: 90% of m and v below the smallest normal, their gradients 0."""
    rng = np.random.default_rng(seed)
    tiny = np.finfo(dtype).tiny
    p = rng.standard_normal(n).astype(dtype) * 0.05
    g = rng.standard_normal(n).astype(dtype) * 0.01
    m = rng.standard_normal(n).astype(dtype) * 1e-3
    v = np.abs(rng.standard_normal(n)).astype(dtype) * 1e-6
    dead = rng.random(n) < 0.9
    m[dead] = (rng.uniform(-1, 1, dead.sum()) * tiny).astype(dtype)
    v[dead] = (rng.uniform(0, 1, dead.sum()) * tiny).astype(dtype)
    g[dead] = 0
    return p, m, v, g


ADAM_ARGS = (1e-3 / (1 - 0.9 ** 10), 0.9, 0.999, 1e-8, math.sqrt(1 - 0.999 ** 10), 0.0, 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", ["numba", "numpy"])
def test_subnormal_state_and_gradients_are_flushed(dtype, impl):
    if impl == "numba" and not K.FLUSHES_SUBNORMALS:
        pytest.skip("the kernels flush subnormals on x86-64 only")
    tiny = np.finfo(dtype).tiny
    p, m, v, g = _subnormal_adam_state(dtype, n=1000)
    assert np.count_nonzero((m != 0) & (np.abs(m) < tiny)) > 800
    g[:3] = [tiny / 4, np.nan, np.inf]
    dead = (g == 0) & (np.abs(m) < tiny)
    p_before = p.copy()
    adam = _kernel(K.adam_update) if impl == "numba" else R.adam_update
    with np.errstate(invalid="ignore"):
        adam(p, m, v, g, *ADAM_ARGS)
    for name, a in (("m", m), ("v", v)):
        small = np.abs(a) < tiny
        assert not np.any(small & (a != 0)), f"{name} holds subnormals"
    # a flushed unit's moments are exact zeros, so its parameter does not move
    assert dead.sum() > 800 and not m[dead].any() and not v[dead].any()
    np.testing.assert_array_equal(p[dead], p_before[dead])
    assert m[0] == 0 and np.isnan(m[1]) and np.isnan(p[1])  # NaN passes through
    # momentum buffers decaying into the subnormal range are stored as zero
    buf = np.full(4, 2 * tiny, dtype)
    q = np.ones(4, dtype)
    sgd = _kernel(K.sgd_momentum_update) if impl == "numba" else R.sgd_momentum_update
    sgd(q, buf, np.zeros(4, dtype), 0.1, 0.25, 0.0, False)
    np.testing.assert_array_equal(buf, 0)
    np.testing.assert_array_equal(q, 1)


def test_callers_floating_point_mode_is_restored():
    """The kernels' flush-to-zero stays inside them: NumPy on the calling
    thread and numba's pool threads still compute IEEE subnormals afterwards
    (serial and parallel)."""
    for work in (0, 10 ** 9):
        p, m, v, g = _subnormal_adam_state(np.float32, n=70001)
        K.adam_update(p, m, v, g, *ADAM_ARGS, work=work)
        assert_ieee_subnormals_here()


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


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_zero_lr_is_accepted_and_changes_nothing(cls):
    """lr = 0 is allowed, as in PyTorch (a cosine schedule ends there), and
    a step at lr 0 leaves the parameters as they were."""
    model = _model()
    params = model.parameters()
    for p in params:
        p.grad[...] = 1.0
    before = [np.array(p) for p in params]
    kw = dict(weight_decay=0.0) if cls is optim.AdamW else {}
    cls(params, lr=0, **kw).step()
    for b, p in zip(before, params):
        np.testing.assert_array_equal(b, p)


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
        optim.Adam(model.parameters()).lr = -1e-3


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


# ------------------------------------------------------------ parameter groups

GROUP_CASES = {
    "sgd": (optim.SGD, "SGD", dict(lr=0.05), [dict(), dict(lr=0.2, weight_decay=0.1)]),
    "sgd-momentum": (optim.SGD, "SGD", dict(lr=0.05, momentum=0.9),
                     [dict(nesterov=True), dict(momentum=0.0, weight_decay=0.01)]),
    "adam": (optim.Adam, "Adam", dict(lr=0.01),
             [dict(betas=(0.8, 0.99)), dict(lr=0.03, eps=1e-6, weight_decay=0.05)]),
    "adamw": (optim.AdamW, "AdamW", dict(lr=0.01),
              [dict(weight_decay=0.0), dict(lr=0.02, weight_decay=0.2)]),
}


@pytest.mark.parametrize("name", sorted(GROUP_CASES))
def test_param_groups_match_pytorch(name):
    """Two groups with different hyperparameters, and a group's lr changed
    between steps (a schedule), against torch.optim's param groups."""
    torch = pytest.importorskip("torch")
    ours_cls, torch_name, defaults, group_kw = GROUP_CASES[name]
    rng = rng_for("groups-torch", name)
    shapes = [(30, 4), (4,), (70001,)]
    init = [randn(rng, s, np.float64) for s in shapes]
    ours = [nn.Parameter(a) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    split = [[0, 1], [2]]
    opt = ours_cls([{"params": [ours[i] for i in idx], **kw} for idx, kw in zip(split, group_kw)],
                   **defaults)
    topt = getattr(torch.optim, torch_name)(
        [{"params": [theirs[i] for i in idx], **kw} for idx, kw in zip(split, group_kw)], **defaults)
    for step in range(5):
        if step == 3:
            for group in (*opt.param_groups, *topt.param_groups):
                group["lr"] *= 0.5
        for p, t in zip(ours, theirs):
            g = randn(rng, p.shape, np.float64)
            p.grad[...] = g
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    for i, (p, t) in enumerate(zip(ours, theirs)):
        assert_close(p, t.detach().numpy(), f"{name} parameter {i}", scale=5)


def _two_group_opt(cls=optim.Adam, dtype=np.float32):
    model = _model(dtype)
    ps = model.parameters()
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05, "weight_decay": 0.1}], lr=0.01)
    return model, opt


def test_param_groups_api():
    model, opt = _two_group_opt()
    ps = model.parameters()
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert all(a is b for a, b in zip(opt.params, ps))
    assert opt.lr == 0.01 and opt.param_groups[1]["lr"] == 0.05
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[1]["betas"] == (0.9, 0.999)
    opt.lr = 0.002  # sets every group
    assert [g["lr"] for g in opt.param_groups] == [0.002, 0.002]
    # a group's lr changed in place takes effect at the next step: lr 0 would be refused,
    # a tiny lr gives a tiny first Adam step (about lr per weight)
    opt.param_groups[1]["lr"] = 1e-6
    before = [np.array(p) for p in ps]
    _fill_grads(ps, 0)
    opt.step()
    assert np.abs(ps[2] - before[2]).max() < 2e-6
    assert np.abs(ps[0] - before[0]).max() > 1e-3
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        opt.step()
    assert opt.step_count == 1  # nothing happened
    opt.param_groups[0]["lr"] = 0.01
    assert "2 groups" in repr(opt)
    # add_param_group
    extra = nn.Parameter(np.zeros(3, np.float32))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert opt.params[-1] is extra and len(opt.state) == 5
    extra.grad[...] = 1.0
    opt.step()
    np.testing.assert_allclose(extra, -0.5, rtol=1e-5)


def test_sgd_groups_mixed_momentum():
    model = _model(np.float64)
    ps = model.parameters()
    opt = optim.SGD([{"params": ps[:2], "momentum": 0.9}, {"params": ps[2:]}], lr=0.1)
    assert "momentum_buffer" in opt.state[0] and "momentum_buffer" not in opt.state[2]
    ref = _model(np.float64).parameters()
    r1 = optim.SGD(ref[:2], lr=0.1, momentum=0.9, backend="numpy")
    r2 = optim.SGD(ref[2:], lr=0.1, backend="numpy")
    for seed in range(2):
        _fill_grads(ps, seed)
        _fill_grads(ref, seed)
        opt.step()
        r1.step()
        r2.step()
    for a, b in zip(ps, ref):
        assert_close(a, b, "parameter")
    # momentum switched on later: the buffers are made then (zero, so the first is d)
    opt.param_groups[1]["momentum"] = 0.5
    opt.step()
    assert "momentum_buffer" in opt.state[2]
    np.testing.assert_allclose(opt.state[2]["momentum_buffer"], ps[2].grad, rtol=1e-12)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_param_groups_state_dict_round_trip(cls):
    kw = dict(lr=0.1, momentum=0.5) if cls is optim.SGD else dict(lr=0.01)
    def make():
        model = _model()
        ps = model.parameters()
        return model, cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05, "weight_decay": 0.1}], **kw)
    (a, oa), (b, ob) = make(), make()
    oa.param_groups[0]["initial_lr"] = 0.1  # as a scheduler stores it
    for seed in range(2):
        _fill_grads(a.parameters(), seed)
        oa.step()
    sd = oa.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert sd["param_groups"][1]["lr"] == 0.05 and sd["param_groups"][0]["initial_lr"] == 0.1
    b.load_state_dict(a.state_dict())
    ob.param_groups[1]["lr"] = 0.9
    ob.load_state_dict(sd)
    assert ob.param_groups[1]["lr"] == 0.05 and ob.param_groups[0]["initial_lr"] == 0.1
    assert ob.step_count == 2
    for opt, model in ((oa, a), (ob, b)):
        _fill_grads(model.parameters(), 7)
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb)
    # a state with another grouping is refused, naming the groups
    one = cls(_model().parameters(), **kw)
    with pytest.raises(ValueError, match="2 param groups, the optimizer has 1"):
        one.load_state_dict(sd)
    other = make()[1]
    bad = oa.state_dict()
    bad["param_groups"][0]["params"], bad["param_groups"][1]["params"] = [0], [1, 2, 3]
    with pytest.raises(ValueError, match=r"param group 0 holds parameters \[0\]"):
        other.load_state_dict(bad)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam])
def test_param_groups_checkpoint_round_trip(tmp_path, cls):
    kw = dict(lr=0.1, momentum=0.5, nesterov=True) if cls is optim.SGD else dict(lr=0.01)
    def make():
        model = _model()
        ps = model.parameters()
        return model, cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05, "weight_decay": 0.1}], **kw)
    (a, oa), (b, ob) = make(), make()
    _fill_grads(a.parameters(), 0)
    oa.step()
    fastnn.save(tmp_path / "c.npz", a, oa, epoch=1)
    assert fastnn.load(tmp_path / "c.npz", b, ob) == {"epoch": 1}
    assert ob.param_groups[1]["lr"] == 0.05 and ob.param_groups[1]["weight_decay"] == 0.1
    assert [len(g["params"]) for g in ob.param_groups] == [2, 2]
    for opt, model in ((oa, a), (ob, b)):
        _fill_grads(model.parameters(), 3)
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb)
    # one group saved, two expected: refused before anything changes
    fastnn.save(tmp_path / "one.npz", a, cls(a.parameters(), **kw))
    with pytest.raises(ValueError, match="1 param groups, the optimizer has 2"):
        fastnn.load(tmp_path / "one.npz", b, ob)


def test_bad_param_groups_name_the_problem():
    ps = _model().parameters()
    cases = [
        ([{"params": ps[:2]}, {"lr": 0.1}], ValueError, r"param_groups\[1\] has no 'params'"),
        ([{"params": ps[:2]}, {"params": ps[1:]}], ValueError,
         r"param_groups\[1\]\['params'\]\[0\] is already in param_groups\[0\]"),
        ([{"params": ps, "learning_rate": 0.1}], ValueError, r"unknown keys \['learning_rate'\]"),
        ([{"params": ps[:2]}, {"params": ps[2:], "lr": -1}], ValueError, r"param_groups\[1\]\['lr'\]"),
        ([{"params": ps, "betas": (0.9, 1.5)}], ValueError, r"param_groups\[0\]\['betas'\]\[1\]"),
        ([{"params": []}], TypeError, r"param_groups\[0\]\['params'\] is empty"),
        ([{"params": [np.zeros(3)]}], TypeError, r"param_groups\[0\]\['params'\]\[0\] must be a fastnn"),
        ([{"params": ps[:2]}, ps[2]], TypeError, "not a mix"),
    ]
    for groups, exc, match in cases:
        with pytest.raises(exc, match=match):
            optim.Adam(groups)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['nesterov'\]=True needs momentum"):
        optim.SGD([{"params": ps[:2]}, {"params": ps[2:], "nesterov": True}], lr=0.1)
    opt = optim.SGD([{"params": ps[:2], "momentum": 0.9, "nesterov": True}, {"params": ps[2:]}], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        opt.momentum = 0.0


def test_mixed_dtypes_and_many_tensors_in_one_optimizer():
    """float32 and float64 parameters (one kernel call each) and more tensors
    than one call takes; agrees with the NumPy backend."""
    rng = rng_for("many")
    def params():
        r = np.random.default_rng(5)
        return [nn.Parameter(r.standard_normal(n).astype(np.float32 if n % 2 else np.float64))
                for n in range(1, 150)]
    a, b = params(), params()
    oa, ob = optim.Adam(a, lr=0.01), optim.Adam(b, lr=0.01, backend="numpy")
    for _ in range(2):
        for p, q in zip(a, b):
            p.grad[...] = q.grad[...] = randn(rng, p.shape, p.dtype)
        oa.step()
        ob.step()
    for p, q in zip(a, b):
        assert p.dtype == q.dtype
        assert_close(p, q, "parameter")


def test_gradients_and_state_share_the_parameters_page_offset():
    """fastnn._memory: no 4K aliasing between an update's streams, whatever the allocator did."""
    from fastnn._memory import PAGE, zeros_at_same_page_offset

    base = np.empty(3 * PAGE, np.uint8)
    for shift in (0, 16, 64, 1000, 4032):
        a = base[shift:shift + 2 * PAGE].view(np.float32)
        z = zeros_at_same_page_offset(a)
        assert z.shape == a.shape and z.dtype == a.dtype and z.flags.c_contiguous and z.flags.writeable
        assert (z.ctypes.data - a.ctypes.data) % PAGE == 0 and not z.any()
    p = nn.Parameter(np.ones((300, 40), np.float32))
    opt = optim.Adam([p])
    p.grad[...] = 1.0
    opt.step()
    for arr in (p.grad, opt.state[0]["exp_avg"], opt.state[0]["exp_avg_sq"]):
        assert (arr.ctypes.data - p.ctypes.data) % PAGE == 0


# ------------------------------------------------ gradients and restored state


@pytest.mark.parametrize("rebuild", ["first_step", "momentum", "add_param_group", "load_state_dict"])
def test_grad_replaced_before_a_bucket_rebuild_is_refused(rebuild):
    """The update kernel reads each .grad for its parameter's size with no
    bounds checks: a grad replaced before the buckets are (re)built must be
    checked like one replaced between steps."""
    p = _param([1.0, 2.0, 3.0, 4.0], np.float32)
    opt = optim.SGD([p], lr=1.0)
    if rebuild != "first_step":
        opt.step()
    p.grad = np.ones(1, np.float32)  # shorter than p
    if rebuild == "momentum":
        opt.momentum = 0.9  # makes momentum buffers
    elif rebuild == "add_param_group":
        opt.add_param_group({"params": [nn.Parameter(np.zeros(2, np.float32))]})
    elif rebuild == "load_state_dict":  # state with momentum buffers this optimizer lacks
        opt.load_state_dict(optim.SGD([_param(np.zeros(4), np.float32)], lr=1.0, momentum=0.5).state_dict())
    steps = opt.step_count
    with pytest.raises(ValueError, match=r"params\[0\]\.grad must be an array of the parameter's "
                                         r"shape \(4,\) and dtype float32, got shape \(1,\)"):
        opt.step()
    np.testing.assert_array_equal(p, [1.0, 2.0, 3.0, 4.0])
    assert opt.step_count == steps


@pytest.mark.parametrize("name", ["exp_avg", "exp_avg_sq"])
def test_state_replaced_before_a_bucket_rebuild_is_refused(name):
    """The update kernel also reads and writes the state arrays for the
    parameter's size: one replaced by a shorter array must be refused."""
    p = _param([1.0, 2.0, 3.0, 4.0], np.float32)
    opt = optim.Adam([p], lr=0.1)
    opt.step()
    opt.state[0][name] = np.zeros(1, np.float32)
    opt.add_param_group({"params": [nn.Parameter(np.zeros(2, np.float32))]})  # rebuilds the buckets
    before = p.copy()
    with pytest.raises(ValueError, match=rf"state\[0\]\['{name}'\] must be .* shape \(4,\)"):
        opt.step()
    np.testing.assert_array_equal(p, before)


@pytest.mark.parametrize("grad,match", [
    (None, "got NoneType"),
    (np.ones(4, np.float64), "dtype float64"),
    (np.ones(8, np.float32)[::2], "must be C-contiguous"),
])
def test_bad_grad_before_the_first_step_names_the_parameter(grad, match):
    p = _param([1.0, 2.0, 3.0, 4.0], np.float32)
    opt = optim.Adam([p])
    p.grad = grad
    with pytest.raises(ValueError, match=r"params\[0\]\.grad .*" + match):
        opt.step()
    np.testing.assert_array_equal(p, [1.0, 2.0, 3.0, 4.0])


def _adam_state_after_one_step():
    model = _model()
    opt = optim.Adam(model.parameters(), lr=0.1)
    _fill_grads(model.parameters(), 0)
    opt.step()
    return model, opt.state_dict()


@pytest.mark.parametrize("step", [-1, -5, 1.7, float("nan"), True, "3", np.array([1, 2])])
def test_load_state_dict_refuses_a_step_that_is_not_a_count(step):
    model, sd = _adam_state_after_one_step()
    for st in sd["state"].values():
        st["step"] = step
    fresh = optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"Adam state does not match: parameter 0: step must be "
                                         r"a non-negative integer"):
        fresh.load_state_dict(sd)
    assert fresh.step_count == 0 and not fresh.state[0]["exp_avg"].any()
    # whole numbers of any numeric type are counts
    for ok in (2.0, np.int64(2), np.array(2)):
        for st in sd["state"].values():
            st["step"] = ok
        fresh.load_state_dict(sd)
        assert fresh.step_count == 2
        fresh.step()
        assert all(np.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_load_state_dict_refuses_negative_exp_avg_sq(bad):
    model, sd = _adam_state_after_one_step()
    sd["state"][1]["exp_avg_sq"][0] = bad
    fresh = optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"parameter 1 exp_avg_sq: must be non-negative"):
        fresh.load_state_dict(sd)
    assert not fresh.state[1]["exp_avg_sq"].any()
    # SGD's momentum buffer may be negative
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd.step()
    sd = sgd.state_dict()
    sd["state"][1]["momentum_buffer"][0] = -1.0
    sgd.load_state_dict(sd)
    assert sgd.state[1]["momentum_buffer"][0] == -1.0


@pytest.mark.parametrize("mutate,match", [
    (lambda sd: sd.__setitem__("param_groups", [1]), r"state_dict\['param_groups'\]\[0\] must be a dict, got int"),
    (lambda sd: sd.__setitem__("param_groups", 5), r"state_dict\['param_groups'\] must be a list of dicts"),
    (lambda sd: sd.__setitem__("state", None), r"state_dict\['state'\] must be a dict .*got NoneType"),
    (lambda sd: sd["state"].__setitem__(0, 3), r"state_dict\['state'\]\[0\] must be a dict, got int"),
    (lambda sd: sd["state"].__setitem__("x", sd["state"].pop(0)), "keyed by parameter index, got key 'x'"),
    (lambda sd: sd["param_groups"][0].__setitem__("params", ["a", "b", "c", "d"]),
     r"state_dict\['param_groups'\]\[0\]\['params'\] must be a list of parameter indices"),
])
def test_load_state_dict_names_a_malformed_structure(mutate, match):
    model, sd = _adam_state_after_one_step()
    mutate(sd)
    fresh = optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(sd)
    assert fresh.step_count == 0
