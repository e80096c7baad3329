"""The module API (fastnn.nn): the contract, train/eval, backends, gradient
semantics, Parameter, state_dict, init, the seed's overfit-one-batch check
and a whole-model gradient check against finite differences."""

import pickle

import numpy as np
import pytest

import fastnn
from fastnn import init, nn
from fastnn.kernels import activations as K_act
from fastnn.kernels import batchnorm as K_bn
from fastnn.kernels import dropout as K_drop
from fastnn.kernels import layernorm as K_ln
from fastnn.kernels import linear as K_lin
from fastnn.kernels import step as K_step
from fastnn.kernels import linear_act as K_la
from fastnn.kernels import softmax_xent as K_xent

from _helpers import numeric_grad, rng_for


def mnist_model(backend=None, p=0.2, dtype=np.float32):
    """The seed's recommended MNIST architecture."""
    return nn.Sequential([
        nn.Linear(784, 256, dtype=dtype), nn.ReLU(), nn.Dropout(p),
        nn.Linear(256, 128, dtype=dtype), nn.ReLU(), nn.Dropout(p),
        nn.Linear(128, 10, dtype=dtype),
    ], backend=backend)


def every_layer_model(seed=0, dtype=np.float32, **kw):
    """One of each layer type, reproducible from ``seed``."""
    fastnn.manual_seed(seed)
    return nn.Sequential([
        nn.Linear(12, 16, dtype=dtype), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(16, 16, init="xavier", dtype=dtype), nn.BatchNorm(16, dtype=dtype), nn.Tanh(),
        nn.Linear(16, 16, dtype=dtype), nn.LayerNorm(16, dtype=dtype), nn.GELU(),
        nn.Linear(16, 16, dtype=dtype), nn.SiLU(), nn.Dropout(0.1),
        nn.Linear(16, 16, dtype=dtype), nn.Sigmoid(),
        nn.Linear(16, 8, dtype=dtype), nn.LeakyReLU(alpha=0.1),
        nn.Linear(8, 5, dtype=dtype),
    ], **kw)


def batch(n=9, d=12, c=5, dtype=np.float32, key="batch"):
    rng = rng_for(key, n, d, c)
    return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, c, n)


def train_step(model, ce, x, y):
    """Forward, loss, backward; returns (loss, output, dx, {name: grad copy})."""
    out = model.forward(x)
    loss = ce.forward(out, y)
    dx = model.backward(ce.backward())
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    return loss, out, dx, grads


# ------------------------------------------------------------------ the contract


def test_contract():
    x = np.random.default_rng(0).random((8, 784)).astype(np.float32)
    lin = nn.Linear(784, 256)
    assert lin.W.shape == (784, 256) and lin.b.shape == (256,)
    assert lin.W.dtype == lin.b.dtype == np.float32
    assert nn.Linear(3, 2, init="xavier").W.shape == (3, 2)
    assert nn.Linear(3, 2, dtype=np.float64).W.dtype == np.float64
    h = lin.forward(x)
    np.testing.assert_array_equal(lin(x), h)
    np.testing.assert_allclose(h, x @ lin.W + lin.b, rtol=1e-5, atol=1e-5)
    dh = np.ones_like(h)
    dx = lin.backward(dh)
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert lin.dW.shape == (784, 256) and lin.db.shape == (256,)
    assert lin.dW is lin.W.grad and lin.db is lin.b.grad
    np.testing.assert_allclose(lin.db, np.full(256, 8.0))

    for act in (nn.ReLU(), nn.LeakyReLU(alpha=0.01), nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.SiLU()):
        y = act.forward(h)
        assert y.shape == h.shape and y.dtype == np.float32
        assert act.backward(dh).shape == h.shape

    y = nn.Dropout(p=0.2).forward(h, training=True)
    assert y.shape == h.shape and 0.7 < (y != 0).mean() / (h != 0).mean() < 0.9

    bn = nn.BatchNorm(256, eps=1e-5, momentum=0.1)
    for name in ("gamma", "beta", "dgamma", "dbeta", "running_mean", "running_var"):
        assert getattr(bn, name).shape == (256,)
    assert bn.forward(h, training=True).shape == h.shape
    assert bn.backward(dh).shape == h.shape

    ln = nn.LayerNorm(256, eps=1e-5)
    for name in ("gamma", "beta", "dgamma", "dbeta"):
        assert getattr(ln, name).shape == (256,)
    assert ln.forward(h).shape == h.shape and ln.backward(dh).shape == h.shape

    ce = nn.SoftmaxCrossEntropy()
    logits = h[:, :10]
    labels = np.arange(8) % 10
    loss = ce.forward(logits, labels)
    assert isinstance(loss, float) and loss > 0
    dlogits = ce.backward()
    assert dlogits.shape == logits.shape and dlogits.dtype == np.float32

    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10)])
    out = model.forward(x)
    assert out.shape == (8, 10)
    dout = np.ones_like(out)
    assert model.backward(dout).shape == x.shape
    params = model.parameters()
    assert len(params) == 4 and all(isinstance(p, nn.Parameter) for p in params)
    model.zero_grad()
    assert all((p.grad == 0).all() for p in params)
    assert model.train() is model and model.training
    assert model.eval() is model and not model.training


def test_modules_match_functional():
    x, _ = batch(dtype=np.float64)
    dy = rng_for("dy").standard_normal(x.shape)
    for act, name in ((nn.ReLU(), "relu"), (nn.Sigmoid(), "sigmoid"), (nn.Tanh(), "tanh"),
                      (nn.GELU(), "gelu"), (nn.SiLU(), "silu")):
        np.testing.assert_array_equal(act(x), fastnn.functional.activation(name, x))
        saved = act(x) if name in ("sigmoid", "tanh") else x
        np.testing.assert_array_equal(act.backward(dy),
                                      fastnn.functional.activation_backward(name, dy, saved))
    lr = nn.LeakyReLU(alpha=0.3)
    np.testing.assert_array_equal(lr(x), np.where(x > 0, x, 0.3 * x))
    np.testing.assert_array_equal(lr.backward(dy), np.where(x > 0, dy, 0.3 * dy))


def test_backward_before_forward_raises():
    for m in (nn.Linear(3, 2), nn.ReLU(), nn.LayerNorm(3), nn.BatchNorm(3), nn.SoftmaxCrossEntropy(),
              nn.Sequential([nn.Linear(3, 2), nn.ReLU()])):
        with pytest.raises(RuntimeError, match="before"):
            m.backward(np.ones((2, 2), np.float32)) if not isinstance(m, nn.SoftmaxCrossEntropy) else m.backward()
    bn = nn.BatchNorm(3)
    bn.forward(np.ones((2, 3), np.float32), training=False)
    with pytest.raises(RuntimeError, match="training-mode forward"):
        bn.backward(np.ones((2, 3), np.float32))


def test_sequential_container():
    layers = [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)]
    model = nn.Sequential(layers)
    assert len(model) == 3 and model[1] is layers[1] and list(model) == layers
    assert [n for n, _ in model.named_parameters()] == ["0.W", "0.b", "2.W", "2.b"]
    assert "Linear(3, 4)" in repr(model)
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        nn.Sequential([nn.Linear(3, 4), lambda x: x])
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="only once"):
        nn.Sequential([relu, relu])
    x = np.ones((2, 3), np.float32)
    model.forward(x)
    assert model.backward(np.ones((2, 2), np.float32), need_input_grad=False) is None
    assert model.backward(np.ones((2, 2), np.float32)).shape == (2, 3)


def test_cross_entropy_backward_scales_by_dout():
    ce = nn.SoftmaxCrossEntropy()
    logits, y = batch(4, 5, 5, np.float64)
    ce.forward(logits, y)
    np.testing.assert_allclose(ce.backward(2.5), 2.5 * ce.backward())


# -------------------------------------------------------------------- train/eval


def test_sequential_train_eval_controls_dropout_and_batchnorm():
    model = nn.Sequential([nn.Linear(6, 32), nn.Dropout(0.5), nn.BatchNorm(32), nn.ReLU(),
                           nn.Linear(32, 32), nn.Dropout(0.5)])
    drop, bn = model[1], model[2]
    x, _ = batch(16, 6)

    model.eval()
    assert not drop.training and not bn.training
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    a, b = model.forward(x), model.forward(x)
    np.testing.assert_array_equal(a, b)  # no dropout, no batch statistics
    np.testing.assert_array_equal(bn.running_mean, rm)
    np.testing.assert_array_equal(bn.running_var, rv)
    assert drop.step == 0
    h = x @ model[0].W + model[0].b
    expect = np.maximum((h - rm) / np.sqrt(rv + 1e-5) * bn.gamma + bn.beta, 0) @ model[4].W + model[4].b
    np.testing.assert_allclose(a, expect, rtol=1e-4, atol=1e-5)

    model.train()
    assert drop.training and bn.training
    c, d = model.forward(x), model.forward(x)
    assert (c != d).any()  # new masks each step
    assert drop.step == 2
    assert not np.array_equal(bn.running_mean, rm)
    assert (c == 0).mean() > 0.3  # the last Dropout zeroes about half

    # an explicit training= overrides the mode
    model.eval()
    assert (model.forward(x, training=True) == 0).mean() > 0.3
    assert drop.step == 3
    model.train()
    e = model.forward(x, training=False)
    np.testing.assert_array_equal(e, model.eval().forward(x))
    assert drop.step == 3 and not (e == 0).any()


# ---------------------------------------------------------------------- backends


def _disable_numba_kernels(monkeypatch):
    """Make every numba entry point raise, so a run proves it used NumPy."""
    def boom(*a, **k):
        raise AssertionError("a numba kernel ran on the numpy backend")

    for mod in (K_act, K_bn, K_drop, K_ln, K_lin, K_la, K_xent, K_step):
        for name in dir(mod):
            if name.endswith(("_forward", "_backward")) or name.endswith(("_forward_eval",)):
                monkeypatch.setattr(mod, name, boom)


def test_backend_switching_gives_matching_results(monkeypatch):
    x, y = batch()
    ce = nn.SoftmaxCrossEntropy()
    ce_nb = nn.SoftmaxCrossEntropy()
    ce_nb.backend = "numba"
    ref = train_step(every_layer_model(backend="numba"), ce_nb, x, y)
    assert ref[2] is not None

    def check(res):
        loss, out, dx, grads = res
        assert loss == pytest.approx(ref[0], rel=1e-5)
        np.testing.assert_allclose(out, ref[1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dx, ref[2], rtol=1e-3, atol=1e-5)
        for name, g in grads.items():
            np.testing.assert_allclose(g, ref[3][name], rtol=1e-3, atol=1e-5, err_msg=name)

    _disable_numba_kernels(monkeypatch)
    with pytest.raises(AssertionError, match="numba kernel ran"):
        train_step(every_layer_model(backend="numba"), ce_nb, x, y)

    fastnn.set_backend("numpy")
    assert fastnn.get_backend() == "numpy"
    check(train_step(every_layer_model(), ce, x, y))
    fastnn.set_backend("numba")

    with fastnn.use_backend("numpy"):
        assert fastnn.get_backend() == "numpy"
        check(train_step(every_layer_model(), ce, x, y))
    assert fastnn.get_backend() == "numba"

    model = every_layer_model()
    model.backend = "numpy"
    assert all(layer.backend == "numpy" for layer in model)
    ce_np = nn.SoftmaxCrossEntropy()
    ce_np.backend = "numpy"
    check(train_step(model, ce_np, x, y))
    check(train_step(every_layer_model(backend="numpy"), ce_np, x, y))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_fused_and_unfused_sequential_agree(backend):
    x, y = batch(dtype=np.float64)
    ce = nn.SoftmaxCrossEntropy()
    a = train_step(every_layer_model(dtype=np.float64, backend=backend), ce, x, y)
    b = train_step(every_layer_model(dtype=np.float64, backend=backend, fuse=False), ce, x, y)
    assert a[0] == pytest.approx(b[0], rel=1e-10)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-9, atol=1e-12)
    for name in a[3]:
        np.testing.assert_allclose(a[3][name], b[3][name], rtol=1e-9, atol=1e-12, err_msg=name)


# ------------------------------------------------------------ gradient semantics


def test_gradient_semantics_backward_overwrites_and_zero_grad_zeroes():
    assert "overwrites" in nn.__doc__  # the documented rule
    model = every_layer_model(dtype=np.float64)
    x, y = batch(dtype=np.float64)
    ce = nn.SoftmaxCrossEntropy()
    _, _, _, g1 = train_step(model, ce, x, y)
    for m in model:  # replay the same dropout masks
        if isinstance(m, nn.Dropout):
            m.step = 0
    _, _, _, g2 = train_step(model, ce, x, y)
    for name in g1:
        np.testing.assert_array_equal(g2[name], g1[name], err_msg=f"{name} accumulated")
    model.zero_grad()
    for name, p in model.named_parameters():
        assert (p.grad == 0).all(), name
    # a non-zero grad left over is overwritten, not added to
    lin = nn.Linear(4, 3, dtype=np.float64)
    lin.W.grad[...] = 100.0
    x4 = np.ones((2, 4))
    lin.forward(x4)
    lin.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(lin.dW, np.full((4, 3), 2.0))
    grad_buffer = lin.W.grad
    lin.backward(np.ones((2, 3)))
    assert lin.W.grad is grad_buffer  # written in place: optimizers keep their references


# --------------------------------------------------------------------- Parameter


def test_parameter_behaviour():
    p = nn.Parameter(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert isinstance(p, np.ndarray) and isinstance(p, nn.Parameter)
    assert p.grad.shape == p.shape and p.grad.dtype == p.dtype and (p.grad == 0).all()
    for result in (p * 2, p + p, p - 1, -p, p @ p.T, np.exp(p), np.maximum(p, 1)):
        assert type(result) is np.ndarray
    assert not isinstance(p.sum(), np.ndarray)
    assert p[0].grad is None  # a view has no gradient of its own
    before = id(p)
    p -= 0.5 * p.grad
    p *= 2
    assert id(p) == before and type(p) is nn.Parameter
    # the seed's update through an attribute keeps the layer's Parameter
    lin = nn.Linear(3, 2)
    w = lin.W
    lin.forward(np.ones((2, 3), np.float32))
    lin.backward(np.ones((2, 2), np.float32))
    lin.W -= 0.1 * lin.dW
    lin.b -= 0.1 * lin.db
    assert lin.W is w and type(lin.b) is nn.Parameter and lin.dW.shape == (3, 2)
    q = pickle.loads(pickle.dumps(p))
    assert type(q) is nn.Parameter and np.array_equal(q, p) and q.grad.shape == p.shape
    assert "Parameter(" in repr(p)
    src = np.ones(3)
    r = nn.Parameter(src)
    r += 1
    assert (src == 1).all()  # a Parameter owns a copy of its data


# -------------------------------------------------------------------- state_dict


def test_state_dict_round_trip():
    a = every_layer_model(seed=1)
    x, y = batch()
    for _ in range(3):  # move running stats and dropout steps away from their initial values
        train_step(a, nn.SoftmaxCrossEntropy(), x, y)
    state = a.state_dict()
    assert "4.running_mean" in state and "2.step" in state and "0.W" in state
    assert all(type(v) is np.ndarray for v in state.values())
    state["0.W"] += 1  # a copy: the model is untouched
    assert not np.array_equal(state["0.W"], a[0].W)
    state["0.W"] -= 1

    b = every_layer_model(seed=2)
    w_before = b[0].W
    b.load_state_dict(state)
    assert b[0].W is w_before  # loaded in place
    for name, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[name], err_msg=name)
    # (BLAS may round differently for differently aligned buffers: allclose)
    a.eval(), b.eval()
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=1e-5, atol=1e-6)
    a.train(), b.train()
    ya, yb = a.forward(x), b.forward(x)
    np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a[2].mask, b[2].mask)  # same dropout masks from here on


def test_load_state_dict_mismatch_messages():
    model = nn.Sequential([nn.Linear(3, 4), nn.BatchNorm(4)])
    state = model.state_dict()

    bad = dict(state)
    del bad["1.running_var"]
    with pytest.raises(ValueError, match=r"missing: \['1.running_var'\]"):
        model.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"unexpected: \['2.W'\]"):
        model.load_state_dict({**state, "2.W": np.zeros(1)})
    with pytest.raises(ValueError, match=r"0.W: shape \(4, 3\) in the state, \(3, 4\) in the model"):
        model.load_state_dict({**state, "0.W": np.zeros((4, 3), np.float32)})
    with pytest.raises(ValueError, match=r"0.b: dtype float64 in the state, float32 in the model"):
        model.load_state_dict({**state, "0.b": np.zeros(4)})
    # a failed load changes nothing
    w = model[0].W.copy()
    with pytest.raises(ValueError):
        model.load_state_dict({**{k: v + 1 for k, v in state.items()}, "0.b": np.zeros(4)})
    np.testing.assert_array_equal(model[0].W, w)


# -------------------------------------------------------------------------- init


@pytest.mark.parametrize("fan_in,fan_out", [(784, 256), (256, 128)])
def test_he_and_xavier_std(fan_in, fan_out):
    fastnn.manual_seed(0)
    he = nn.Linear(fan_in, fan_out).W
    xa = nn.Linear(fan_in, fan_out, init="xavier").W
    # std of n normal samples is within ~3/sqrt(2n) relative of the truth
    tol = 4 / np.sqrt(2 * fan_in * fan_out)
    assert he.std() == pytest.approx(np.sqrt(2 / fan_in), rel=tol)
    assert xa.std() == pytest.approx(np.sqrt(2 / (fan_in + fan_out)), rel=tol)
    assert abs(he.mean()) < 4 * np.sqrt(2 / fan_in) / np.sqrt(he.size)
    assert (nn.Linear(fan_in, fan_out).b == 0).all()
    w = init.he(fan_in, fan_out, dtype=np.float64, rng=np.random.default_rng(1))
    assert w.dtype == np.float64 and w.std() == pytest.approx(np.sqrt(2 / fan_in), rel=tol)
    w = init.xavier(fan_in, fan_out, rng=np.random.default_rng(1))
    assert w.dtype == np.float32
    assert w.std() == pytest.approx(np.sqrt(2 / (fan_in + fan_out)), rel=tol)


def test_manual_seed_makes_init_reproducible():
    fastnn.manual_seed(5)
    a = mnist_model()
    fastnn.manual_seed(5)
    b = mnist_model()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q, err_msg=n)
    assert a[2].seed == b[2].seed and a[2].seed != a[5].seed
    x = np.ones((4, 784), np.float32)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


# ---------------------------------------------------------- overfit one batch


def _sgd_run(backend, steps, lr=0.1):
    """The seed's debugging check on random MNIST-shaped data; returns
    the training losses and the final eval-mode loss."""
    rng = rng_for("overfit")
    x = rng.random((32, 784)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    fastnn.manual_seed(0)
    model = mnist_model(backend=backend)
    ce = nn.SoftmaxCrossEntropy()
    ce.backend = backend
    losses = []
    for _ in range(steps):
        losses.append(ce.forward(model.forward(x), y))
        model.backward(ce.backward(), need_input_grad=False)
        for p in model.parameters():
            p -= lr * p.grad
    assert all(p.dtype == np.float32 for p in model.parameters())
    model.eval()
    return losses, ce.forward(model.forward(x), y)


def test_mnist_model_overfits_one_batch_numba_float32():
    losses, final = _sgd_run("numba", 100)
    assert np.isfinite(losses).all()
    assert final < 0.01, f"cannot overfit one batch: loss {final:.4f} (first {losses[0]:.3f})"


def test_overfit_short_run_numpy_matches_numba():
    # Short: float32 trajectories drift apart once training turns chaotic.
    lnp, fnp = _sgd_run("numpy", 15)
    lnb, fnb = _sgd_run("numba", 15)
    assert fnp < 0.5 * lnp[0]
    np.testing.assert_allclose(lnp, lnb, rtol=1e-3)
    assert fnp == pytest.approx(fnb, rel=1e-3)


# --------------------------------------------------- whole-model gradient check


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_whole_model_gradients_match_finite_differences(backend, fuse):
    fastnn.manual_seed(3)
    d = np.float64
    model = nn.Sequential([
        nn.Linear(5, 6, dtype=d), nn.Tanh(),
        nn.Linear(6, 6, dtype=d), nn.GELU(), nn.LayerNorm(6, dtype=d),
        nn.Linear(6, 6, dtype=d), nn.BatchNorm(6, dtype=d), nn.SiLU(),
        nn.Linear(6, 6, dtype=d), nn.LeakyReLU(0.1),
        nn.Linear(6, 4, dtype=d), nn.Sigmoid(),
        nn.Linear(4, 3, dtype=d),
    ], backend=backend, fuse=fuse)
    rng = rng_for("model-fd")
    for m in model:  # non-trivial normalisation parameters
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm)):
            m.gamma[...] = 1 + 0.3 * rng.standard_normal(6)
            m.beta[...] = 0.3 * rng.standard_normal(6)
    x = rng.standard_normal((4, 5))
    y = np.array([0, 2, 1, 2])
    ce = nn.SoftmaxCrossEntropy()
    ce.backend = backend

    def loss():
        return ce.forward(model.forward(x), y)

    loss()
    dx = model.backward(ce.backward())
    analytic = {name: p.grad.copy() for name, p in model.named_parameters()}
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-8, err_msg="dx")
    for name, p in model.named_parameters():
        np.testing.assert_allclose(analytic[name], numeric_grad(loss, p), rtol=1e-5, atol=1e-8,
                                   err_msg=name)


def test_training_forward_after_a_layer_path_forward():
    """A Sequential whose eval forward ran layer by layer (no inference fast
    path for a model that starts with an activation) trains next through the
    compiled step, and the reverse: the cache of what ran is not a submodule
    (this raised TypeError once)."""
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    model = nn.Sequential([nn.ReLU(), nn.Linear(32, 8)])
    keys = list(model.state_dict())
    y_eval = model.forward(x, training=False)
    y_train = model.forward(x, training=True)
    np.testing.assert_allclose(y_train, y_eval, rtol=1e-6)
    dx = model.backward(np.ones((64, 8), np.float32))
    assert dx.shape == x.shape
    model.forward(x[:3], training=True)
    model.forward(x, training=False)
    assert list(model.state_dict()) == keys and len(model.parameters()) == 2
