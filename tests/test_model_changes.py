"""A model changed after construction: replaced parameters, hyperparameters
assigned later, a layer list edited in place, tiny batches.

The compiled training step (fastnn/_step.py), the fused blocks
(nn._LinearActBlock) and the eval fast path (fastnn/_inference.py) hand
arrays to kernels that do no bounds checking, so every change must either be
used or refused with the layer path's ValueError/TypeError, before a kernel
runs. Also: errors of fit/evaluate/gradcheck that named the wrong thing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastnn
from fastnn import _step, nn, optim, train


def _data(n=16, d=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), np.arange(n) % classes


def _mlp(act=None, fuse=True):
    fastnn.manual_seed(0)
    return nn.Sequential([nn.Linear(4, 8), act or nn.ReLU(), nn.Linear(8, 3)], fuse=fuse)


def _fit(m, X, y, **kw):
    return fastnn.fit(m, nn.SoftmaxCrossEntropy(), optim.SGD(m.parameters(), lr=0.1), X, y,
                      epochs=1, batch_size=8, progress=False, seed=0, **kw)


# ------------------------------------------------------- A3: replaced W or b

_REPLACED = [
    (0, "b", (3,), np.float32, ValueError),   # shorter than out_features
    (0, "b", (50,), np.float32, ValueError),  # longer
    (0, "W", (4, 3), np.float32, ValueError),
    (0, "W", (2, 8), np.float32, ValueError),
    (2, "W", (8, 2), np.float32, ValueError),
    (0, "b", (8,), np.float64, TypeError),    # float64 bias in a float32 model
]


@pytest.mark.parametrize("path", ["train", "eval", "fit"])
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("layer,name,shape,dtype,exc", _REPLACED)
def test_replaced_linear_parameter_is_refused(path, fuse, layer, name, shape, dtype, exc):
    X, y = _data()
    m = _mlp(fuse=fuse)
    m(X)  # programs and plans built with the original parameters
    m(X, training=False)
    setattr(m[layer], name, nn.Parameter(np.zeros(shape, dtype)))
    with pytest.raises(exc, match=rf"\b{name}\b"):
        if path == "train":
            m(X)
            m.backward(np.ones((len(X), 3), np.float32))
        elif path == "eval":
            m(X, training=False)
        else:
            _fit(m, X, y)


def test_replaced_parameter_of_the_right_shape_is_used():
    X, _ = _data()
    m, ref = _mlp(), _mlp(fuse=False)
    m(X), m(X, training=False)
    W = nn.Parameter(np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32))
    b = nn.Parameter(np.full(8, 0.5, np.float32))
    m[0].W, m[0].b = W, b
    ref[0].W, ref[0].b = nn.Parameter(W), nn.Parameter(b)
    np.testing.assert_allclose(m(X, training=False), ref(X, training=False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m(X), ref(X), rtol=1e-5, atol=1e-6)


def test_replaced_gradient_of_another_shape_is_refused():
    X, _ = _data()
    m = _mlp()
    m(X)
    m[0].W.grad = np.zeros(1, np.float32)  # the backward would write 32 floats into it
    with pytest.raises(ValueError, match=r"W\.grad"):
        m(X)
        m.backward(np.ones((len(X), 3), np.float32))


def test_replaced_gradient_is_refused_by_the_fused_layer_path(monkeypatch):
    monkeypatch.setattr(_step, "module_forward", lambda model, x: None)  # the fused blocks, layer by layer
    X, _ = _data()
    m = _mlp()
    m(X)
    m[0].b.grad = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match=r"b\.grad"):
        m(X)
        m.backward(np.ones((len(X), 3), np.float32))


def test_bias_removed_after_the_first_forward_replans():
    X, _ = _data()
    m, ref = _mlp(), _mlp(fuse=False)
    m(X), m(X, training=False)
    m[0].b = ref[0].b = None  # no longer a fused Linear + activation
    np.testing.assert_allclose(m(X, training=False), ref(X, training=False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m(X), ref(X), rtol=1e-5, atol=1e-6)


def test_replaced_norm_parameter_is_refused_by_the_step():
    X, _ = _data()
    m = nn.Sequential([nn.Linear(4, 8), nn.BatchNorm(8), nn.ReLU(), nn.Linear(8, 3)])
    m(X)
    m[1].gamma = nn.Parameter(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="gamma"):
        m(X)


# ------------------------------------------------ B1: BatchNorm, batch of 1

def _bn_model():
    fastnn.manual_seed(0)
    return nn.Sequential([nn.Linear(4, 3), nn.BatchNorm(3)])


def test_batchnorm_training_forward_of_one_row_is_refused():
    m = _bn_model()
    x1 = _data(n=1)[0]
    with pytest.raises(ValueError, match="more than 1 sample"):
        m(x1)
    np.testing.assert_array_equal(m[1].running_var, np.ones(3, np.float32))
    assert m(_data(n=2)[0]) is not None and m._ran is _step.PROGRAM_RAN  # the step still serves 2 rows


def test_batchnorm_train_on_batch_of_one_row_is_refused():
    with pytest.raises(ValueError, match="more than 1 sample"):
        _bn_model().train_on_batch(_data(n=1)[0], np.array([0]))


def test_fit_refuses_batch_size_1_for_batchnorm():
    X, y = _data(20)
    m = _bn_model()
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        fastnn.fit(m, nn.SoftmaxCrossEntropy(), optim.SGD(m.parameters(), lr=0.1), X, y, epochs=1,
                   batch_size=1, progress=False)
    np.testing.assert_array_equal(m[1].running_var, np.ones(3, np.float32))


def test_program_forward_of_one_row_is_refused():
    X, _ = _data()
    prog = _step.SequentialProgram.build(_bn_model(), nn.SoftmaxCrossEntropy(), X)
    assert prog is not None
    with pytest.raises(ValueError, match="more than 1 sample"):
        prog.forward(1)


# ------------------------------------------- B2: LeakyReLU.alpha changed later

@pytest.mark.parametrize("training", [True, False])
def test_leaky_relu_alpha_changed_after_the_first_forward_is_used(training):
    X, _ = _data()
    m = _mlp(nn.LeakyReLU(0.1))
    ref = _mlp(nn.LeakyReLU(0.9), fuse=False)
    m(X, training=training)
    m[1].alpha = 0.9
    np.testing.assert_allclose(m(X, training=training), ref(X, training=training), rtol=1e-5, atol=1e-6)


def test_leaky_relu_alpha_changed_after_the_first_forward_is_used_by_fit():
    X, y = _data()
    m, ref = _mlp(nn.LeakyReLU(0.1)), _mlp(nn.LeakyReLU(0.1))  # the same weights
    m(X), m(X, training=False)  # plans and programs with alpha 0.1
    m[1].alpha = ref[1].alpha = 0.9
    np.testing.assert_allclose(_fit(m, X, y)["loss"], _fit(ref, X, y)["loss"], rtol=1e-6)


# ---------------------------------------- B3: hyperparameters assigned later

_BAD_HYPER = [
    (lambda: nn.Dropout(0.3), "p", 1.0, ValueError),
    (lambda: nn.Dropout(0.3), "p", 1.5, ValueError),
    (lambda: nn.Dropout(0.3), "p", -0.5, ValueError),
    (lambda: nn.Dropout(0.3), "p", math.nan, ValueError),
    (lambda: nn.Dropout(0.3), "p", "abc", TypeError),
    (lambda: nn.BatchNorm(8), "eps", -1.0, ValueError),
    (lambda: nn.BatchNorm(8), "eps", math.nan, ValueError),
    (lambda: nn.BatchNorm(8), "momentum", 5.0, ValueError),
    (lambda: nn.BatchNorm(8), "momentum", math.nan, ValueError),
    (lambda: nn.LayerNorm(8), "eps", -1.0, ValueError),
    (lambda: nn.LayerNorm(8), "eps", math.nan, ValueError),
    (lambda: nn.LeakyReLU(0.1), "alpha", math.nan, ValueError),
    (lambda: nn.LeakyReLU(0.1), "alpha", "abc", TypeError),
]


@pytest.mark.parametrize("make,name,value,exc", _BAD_HYPER)
def test_bad_hyperparameter_assigned_later_is_refused(make, name, value, exc):
    X, _ = _data()
    mod = make()
    m = nn.Sequential([nn.Linear(4, 8), mod, nn.Linear(8, 3)])
    m(X), m(X, training=False)
    before = getattr(mod, name)
    with pytest.raises(exc, match=rf"\b{name}\b"):
        setattr(mod, name, value)
    assert getattr(mod, name) == before
    assert np.isfinite(m(X)).all() and np.isfinite(m(X, training=False)).all()


def test_good_hyperparameter_assigned_later_is_stored_as_float():
    d, bn = nn.Dropout(0.3), nn.BatchNorm(4)
    d.p, bn.momentum, bn.eps = np.float64(0.25), np.float32(0.5), 1
    assert (d.p, bn.momentum, bn.eps) == (0.25, 0.5, 1.0)
    assert type(d.p) is float and "p" not in d.state_dict()


# ------------------------------------------------ B6: targets as a view

@pytest.mark.parametrize("loss_cls", [nn.MSELoss, nn.BCEWithLogitsLoss])
def test_pointwise_loss_copies_targets_that_are_a_slice_of_a_buffer(loss_cls):
    pred = np.random.default_rng(0).standard_normal((4, 1)).astype(np.float32)
    buf = np.random.default_rng(1).uniform(size=(8, 1)).astype(np.float32)
    loss, ref = loss_cls(), loss_cls()
    loss.forward(pred, buf[:4])
    ref.forward(pred, buf[:4].copy())
    buf[:] = 100.0  # the caller gathers its next batch into the buffer
    np.testing.assert_array_equal(loss.backward(), ref.backward())


# ------------------------------------------------ B7: a module appended twice

@pytest.mark.parametrize("training", [True, False])
def test_module_appended_twice_is_refused(training):
    lin = nn.Linear(4, 4)
    m = nn.Sequential([lin, nn.Tanh()])
    m(_data()[0])
    m.layers.append(lin)
    with pytest.raises(ValueError, match="only once"):
        m(_data()[0], training=training)


# ---------------------------------------------- C6: AttributeErrors escaping

def test_linear_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(3, 2, rng=5)
    nn.Linear(3, 2, rng=np.random.default_rng(5))


def test_overfit_single_batch_checks_the_loss():
    X, y = _data()
    with pytest.raises(TypeError, match="loss_fn"):
        train.overfit_single_batch(_mlp(), None, X, y, steps=1)


def test_gradcheck_checks_the_loss():
    X, y = _data(n=4)
    with pytest.raises(TypeError, match="loss_fn"):
        train.gradcheck(_mlp(), X, y, loss_fn=lambda a, b: 0)


# --------------------------------------------- C7: errors naming the wrong thing

def test_evaluate_names_the_dataset_row_of_a_bad_label():
    X, y = _data(20)
    y[15] = 7
    with pytest.raises(ValueError, match=r"y\[15\] = 7 \(dataset row 15\)"):
        fastnn.evaluate(_mlp(), nn.SoftmaxCrossEntropy(), X, y, batch_size=10)


def test_evaluate_names_the_dtype_given():
    X, y = _data(20)
    with pytest.raises(TypeError, match="float64"):
        fastnn.evaluate(_mlp(), nn.SoftmaxCrossEntropy(), X, y.astype(np.float64), batch_size=10)


def test_fit_reports_a_huge_uint64_label_as_given():
    X, y = _data(20)
    y = y.astype(np.uint64)
    y[7] = 2**63 + 5
    with pytest.raises(ValueError, match=f"{2**63 + 5} at dataset row 7"):
        _fit(_mlp(), X, y)


@pytest.mark.parametrize("shape", [(20,), (20, 4, 1)])
def test_fit_describes_the_x_given(shape):
    X = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"X must be 2-D, got {len(shape)}-D array of shape {shape}".replace(
            "(", r"\(").replace(")", r"\)")):
        _fit(_mlp(), X, np.arange(20) % 3)


def test_eval_widths_that_do_not_chain_name_the_layer():
    m = nn.Sequential([nn.Linear(4, 8), nn.Linear(5, 3)])
    X = _data(20)[0]
    msg = r"x must have shape \(N, 5\) for Linear\(5, 3\), got \(20, 8\)"
    with pytest.raises(ValueError, match=msg):
        m(X, training=False)
    with pytest.raises(ValueError, match=msg):
        m(X)


# --------------------------------------------- C8: Dropout.backward first

def test_dropout_backward_before_forward_raises():
    d = nn.Dropout(0.5)
    x = np.ones((4, 5), np.float32)
    with pytest.raises(RuntimeError, match="before forward"):
        d.backward(x)
    d(x, training=False)
    np.testing.assert_array_equal(d.backward(x), x)  # the identity's gradient


def test_dropout_backward_after_a_compiled_forward_works():
    X, _ = _data()
    m = nn.Sequential([nn.Linear(4, 8), nn.BatchNorm(8), nn.Dropout(0.5), nn.Linear(8, 3)])
    m(X)
    assert m._ran is _step.PROGRAM_RAN
    dout = np.ones((len(X), 8), np.float32)
    np.testing.assert_array_equal(m[2].backward(dout), dout * m[2].mask * 2)


def test_a_deep_copied_model_trains_and_keeps_its_gradients():
    import copy

    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)])
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    model(x)
    model.backward(np.ones((6, 3), np.float32))
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert q is not p and q.grad is not p.grad
        np.testing.assert_array_equal(q, p)
        np.testing.assert_array_equal(q.grad, p.grad)
    np.testing.assert_array_equal(twin(x), model(x))
    twin.backward(np.ones((6, 3), np.float32))


def test_fit_refuses_masked_labels():
    X = np.zeros((3, 4), np.float32)
    y = np.ma.array(np.array([0, 1, 2**30], dtype=np.int64), mask=[0, 0, 1])
    model = nn.Sequential([nn.Linear(4, 3)])
    with pytest.raises(TypeError, match=r"\by\b.*masked array"):
        fastnn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, y,
                   epochs=1, progress=False)


@pytest.mark.parametrize("value, error", [(-5, ValueError), (2**70, ValueError), ("abc", TypeError),
                                          (1.7, TypeError), (True, TypeError)])
def test_dropout_step_must_be_a_count(value, error):
    d = nn.Dropout(0.5)
    with pytest.raises(error, match=r"\bstep\b"):
        d.step = value
    assert d.step == 0


def test_dropout_seed_must_be_an_int_and_is_taken_modulo_2_64():
    d = nn.Dropout(0.5, seed=1)
    with pytest.raises(TypeError, match=r"\bseed\b"):
        d.seed = "x"
    d.seed = -1
    assert d.seed == 2**64 - 1


def test_a_negative_dropout_step_in_a_state_dict_is_refused():
    m = nn.Sequential([nn.Linear(5, 5), nn.Dropout(0.5), nn.Linear(5, 2)])
    state = m.state_dict()
    state["1.step"] = np.array(-5, np.int64)
    with pytest.raises(ValueError, match=r"1\.step.*non-negative"):
        m.load_state_dict(state)
    assert m.layers[1].step == 0


def test_zero_grad_restores_a_gradient_set_to_none_and_names_a_bad_one():
    lin = nn.Linear(3, 2)
    lin.W.grad[...] = 1.0
    lin.b.grad = None
    lin.zero_grad()
    assert isinstance(lin.b.grad, np.ndarray) and lin.b.grad.shape == (2,)
    np.testing.assert_array_equal(lin.W.grad, 0)
    np.testing.assert_array_equal(lin.b.grad, 0)
    opt = optim.SGD(lin.parameters(), lr=0.1)
    lin.W.grad = [0.0]
    with pytest.raises(ValueError, match=r"W\.grad must be an array"):
        lin.zero_grad()
    with pytest.raises(ValueError, match=r"params\[0\]\.grad must be an array"):
        opt.zero_grad()


# ----------------------------------------------------- modules users write themselves


class _Temperature(nn.Sequential):
    """logits / T: a Sequential subclass with a forward and backward of its own."""

    def forward(self, x, training=None):
        return super().forward(x, training) / np.float32(10.0)

    def backward(self, dout=None, need_input_grad=True):
        return super().backward(dout / np.float32(10.0), need_input_grad)


def _data_for_fit(n=16):
    rng = np.random.default_rng(5)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


def test_fit_runs_a_sequential_subclass_own_forward_and_backward():
    X, y = _data_for_fit()
    fastnn.manual_seed(0)
    m1 = _Temperature([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)])
    fastnn.manual_seed(0)
    m2 = _Temperature([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)])
    h = fastnn.fit(m1, nn.SoftmaxCrossEntropy(), optim.SGD(m1.parameters(), lr=0.1), X, y, epochs=1,
                   batch_size=8, shuffle=False, progress=False)
    ce, opt = nn.SoftmaxCrossEntropy(), optim.SGD(m2.parameters(), lr=0.1)
    losses = []
    for s in (0, 8):
        losses.append(ce.forward(m2.forward(X[s:s + 8]), y[s:s + 8]))
        m2.backward(ce.backward())
        opt.step()
    assert h["loss"][0] == pytest.approx(np.mean(losses), rel=1e-5)
    for p, q in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


class _ReLU6(nn.ReLU):
    def forward(self, x, training=None):
        self.x = x
        return np.clip(x, 0, 6)

    def backward(self, dout):
        return dout * ((self.x > 0) & (self.x < 6))


class _Doubled(nn.Linear):
    def forward(self, x, training=None):
        return 2 * super().forward(x, training)

    def backward(self, dout, need_dx=True):
        return super().backward(2 * dout, need_dx=need_dx)


@pytest.mark.parametrize("layers", [
    lambda: [nn.Linear(4, 5), _ReLU6(), nn.Linear(5, 3)],
    lambda: [_Doubled(4, 5), nn.ReLU(), nn.Linear(5, 3)],
], ids=["activation subclass", "linear subclass"])
@pytest.mark.parametrize("training", [True, False])
def test_subclasses_of_built_in_modules_run_their_own_code_in_a_sequential(layers, training):
    x = 10 * np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    fastnn.manual_seed(0)
    model = nn.Sequential(layers())
    y = model.forward(x, training=training)
    ref = x
    for layer in model.layers:
        ref = layer.forward(ref, training=training)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-5)


def test_tied_weights_are_refused_with_the_reason():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.W = a.W
    model = nn.Sequential([a, nn.Tanh(), b])
    with pytest.raises(ValueError, match="tied|shared"):
        optim.SGD(model.parameters(), lr=0.1)
    unique = list({id(p): p for p in model.parameters()}.values())
    X, y = _data_for_fit(8)
    with pytest.raises(ValueError, match=r"'0\.W' and '2\.W' are the same Parameter"):
        fastnn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(unique, lr=0.1), X, y, epochs=1,
                   progress=False)


class _Identity(nn.Module):
    def forward(self, x, training=None):
        return x

    def backward(self, dout):
        return dout


@pytest.mark.parametrize("training", [True, False])
def test_a_sequential_never_returns_a_buffer_it_reuses(training):
    rng = np.random.default_rng(2)
    x1, x2 = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    model = nn.Sequential([nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), _Identity()])
    o1 = model.forward(x1, training=training)
    keep = o1.copy()
    model.forward(x2, training=training)
    np.testing.assert_array_equal(o1, keep)


def test_a_sequential_never_returns_an_input_gradient_buffer_it_reuses():
    rng = np.random.default_rng(3)
    model = nn.Sequential([_Identity(), nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4)])
    x, dy = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32)
    model.forward(x)
    d1 = model.backward(dy)
    keep = d1.copy()
    model.forward(x)
    model.backward(2 * dy)
    np.testing.assert_array_equal(d1, keep)


@pytest.mark.parametrize("value", [
    lambda: [nn.Parameter(np.ones(4, np.float32)), nn.Parameter(np.zeros(4, np.float32))],
    lambda: (nn.Parameter(np.ones(4, np.float32)),),
    lambda: {"w": nn.Parameter(np.ones(4, np.float32))},
    lambda: (nn.Linear(2, 2),),
    lambda: {"a": nn.Linear(2, 2)},
    lambda: [nn.Parameter(np.ones(4, np.float32)), nn.Linear(4, 4)],
], ids=["list of parameters", "tuple", "dict", "tuple of modules", "dict of modules", "mixed list"])
def test_containers_that_would_not_be_registered_are_refused(value):
    class Holder(nn.Module):
        def __init__(self, v):
            self.held = v

    with pytest.raises(TypeError, match=r"Holder\.held: .* would not be registered"):
        Holder(value())


def test_lists_of_modules_and_plain_containers_still_work():
    class Holder(nn.Module):
        def __init__(self):
            self.blocks = [nn.Linear(2, 2), nn.ReLU()]
            self.sizes = (2, 2)
            self.names = {"a": 1}

    h = Holder()
    assert len(list(h.parameters())) == 2
    h.sizes = (3, 3)
    assert h.sizes == (3, 3)


def test_a_name_is_a_parameter_or_a_buffer_not_both():
    class Scale(nn.Module):
        def __init__(self):
            self.register_buffer("w", np.ones(3, np.float32))

    m = Scale()
    m.w = nn.Parameter(np.full(3, 2.0, np.float32))  # now trained
    m.w[...] = 5.0
    state = m.state_dict()
    np.testing.assert_array_equal(state["w"], 5.0)
    assert [name for name, _ in m.named_parameters()] == ["w"]
    assert list(m.named_buffers()) == []
    m.register_buffer("w", np.zeros(3, np.float32))  # back to a buffer
    assert list(m.named_parameters()) == []
    np.testing.assert_array_equal(m.state_dict()["w"], 0.0)
