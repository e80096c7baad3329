"""The compiled training step (fastnn/_step.py, fastnn/kernels/step.py).

It must equal the layer-by-layer path: parameters, optimizer state,
BatchNorm's running statistics, Dropout's masks and counters and the loss
history of ``fit``. It calls the same kernels in the same order and NumPy's
own BLAS, so the numbers agree to rounding: often bit for bit, but LLVM may
vectorise a kernel's reductions differently once the kernel is compiled into
the step (in a fresh build, float32 BatchNorm and LayerNorm differed in the
last bits), hence the tight tolerances below. Where the step does not apply,
``fit`` must take the layer path and say nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn import _blas, _step, nn, optim
from fastnn.kernels import _blas as K_blas
from fastnn.train import NonFiniteLossError


def _close(actual, desired, err_msg="", dtype=None):
    """Equal for masks and counters; equal to rounding for floats (of
    ``dtype``'s precision: a loss is a Python float computed in the model's dtype)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    if actual.dtype.kind != "f":
        np.testing.assert_array_equal(actual, desired, err_msg=err_msg)
        return
    dtype = actual.dtype if dtype is None else np.dtype(dtype)
    rtol, atol = (2e-4, 1e-6) if dtype == np.float32 else (1e-9, 1e-12)
    scale = float(np.abs(desired).max()) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol * max(scale, 1.0), err_msg=err_msg)


def _layers(kind, dt):
    if kind == "seed":
        return [nn.Linear(20, 16, dtype=dt), nn.ReLU(), nn.Dropout(0.2),
                nn.Linear(16, 12, dtype=dt), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 5, dtype=dt)]
    if kind == "every-module":
        return [nn.BatchNorm(20, dtype=dt), nn.Linear(20, 16, dtype=dt), nn.GELU(), nn.LayerNorm(16, dtype=dt),
                nn.Linear(16, 12, bias=False, dtype=dt), nn.Tanh(), nn.Dropout(0.3),
                nn.Linear(12, 12, dtype=dt), nn.SiLU(), nn.Linear(12, 12, dtype=dt), nn.Sigmoid(),
                nn.Dropout(0.1), nn.Linear(12, 8, dtype=dt), nn.LeakyReLU(0.1), nn.BatchNorm(8, dtype=dt),
                nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 5, dtype=dt)]
    if kind == "unfused":
        return [nn.Dropout(0.25), nn.Linear(20, 16, dtype=dt), nn.LayerNorm(16, dtype=dt), nn.ReLU(),
                nn.Linear(16, 5, bias=False, dtype=dt)]
    raise ValueError(kind)


def _sgd(params, lr):
    # Comparisons over several steps use SGD: Adam divides by sqrt(v), so a
    # rounding difference in a gradient near zero becomes a difference of
    # order lr in the weight (both paths call the very same update kernel).
    return optim.SGD(params, lr=lr, momentum=0.9)


def _train(kind, dt, use_program, monkeypatch, epochs=2, fuse=True, opt_cls=_sgd, **fit_kw):
    fastnn.manual_seed(3)
    model = nn.Sequential(_layers(kind, dt), fuse=fuse)
    opt = opt_cls(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 20)).astype(dt)
    y = rng.integers(0, 5, 150)
    built = []
    real_build = _step.SequentialProgram.build

    def build(*args):
        prog = real_build(*args) if use_program else None
        built.append(prog)
        return prog

    with monkeypatch.context() as mp:
        mp.setattr(_step.SequentialProgram, "build", build)
        hist = fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=epochs, batch_size=32,
                          seed=1, progress=False, **fit_kw)
    return model, opt, hist, built


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["seed", "every-module", "unfused"])
def test_fit_equals_layer_path(kind, dt, monkeypatch):
    fuse = kind != "unfused"
    m1, o1, h1, b1 = _train(kind, dt, False, monkeypatch, fuse=fuse)
    m2, o2, h2, b2 = _train(kind, dt, True, monkeypatch, fuse=fuse)
    assert all(b is None for b in b1) and b2[0] is not None, _step.SequentialProgram.why_not
    _close(np.array(h2["loss"]), np.array(h1["loss"]), dtype=dt)
    np.testing.assert_allclose(h2["accuracy"], h1["accuracy"], atol=0.01)
    for (name, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        _close(p2, p1, err_msg=name)
        _close(p2.grad, p1.grad, err_msg=name + ".grad")
    for (name, a1), (_, a2) in zip(m1.named_buffers(), m2.named_buffers()):
        _close(a2, a1, err_msg=name)
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    for i in s1:
        _close(s2[i]["momentum_buffer"], s1[i]["momentum_buffer"], err_msg=f"{i} momentum")


@pytest.mark.parametrize("kind", ["seed", "every-module"])
def test_one_adam_step_equals_layer_path(kind, monkeypatch):
    results = []
    for use_program in (False, True):
        fastnn.manual_seed(3)
        model = nn.Sequential(_layers(kind, np.float32))
        # eps well above rounding: a bias followed by BatchNorm has a gradient
        # of rounding noise (1e-8), which Adam with eps=1e-8 turns into a step
        # of order lr in either direction
        opt = optim.Adam(model.parameters(), lr=1e-2, eps=1e-4)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((32, 20)).astype(np.float32)
        y = rng.integers(0, 5, 32)
        real_build = _step.SequentialProgram.build
        with monkeypatch.context() as mp:
            mp.setattr(_step.SequentialProgram, "build", real_build if use_program else (lambda *a: None))
            hist = fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=32,
                              seed=1, progress=False)
        results.append((hist["loss"], model, opt))
    (l1, m1, o1), (l2, m2, o2) = results
    _close(np.array(l2), np.array(l1), dtype=np.float32)
    for (name, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        _close(p2.grad, p1.grad, err_msg=name + ".grad")
        _close(p2, p1, err_msg=name)
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    for i in s1:
        for key in ("exp_avg", "exp_avg_sq"):
            _close(s2[i][key], s1[i][key], err_msg=f"{i} {key}")


def test_fit_plain_sgd_no_shuffle_and_clipping_equal(monkeypatch):
    kw = dict(opt_cls=lambda p, lr: optim.SGD(p, lr=lr), shuffle=False, clip_grad_norm=0.5)
    m1, _, h1, _ = _train("seed", np.float32, False, monkeypatch, **kw)
    m2, _, h2, built = _train("seed", np.float32, True, monkeypatch, **kw)
    assert built[0] is not None
    _close(np.array(h2["loss"]), np.array(h1["loss"]), dtype=np.float32)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        _close(p2, p1)


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
def test_correct_count_takes_the_first_largest_logit_as_argmax_does(dt):
    from fastnn.kernels.step import _count_correct

    rng = np.random.default_rng(0)
    logits = rng.integers(-2, 3, (200, 7)).astype(dt)  # many ties within a row
    logits[::5, 3] = -np.inf
    logits[::7] = -np.inf
    logits[1::7, 0] = -np.inf
    logits[2::11] = np.finfo(dt).max
    labels = rng.integers(0, 7, 200)
    labels[::3] = logits[::3].argmax(axis=1)
    assert _count_correct(logits, labels) == np.count_nonzero(logits.argmax(axis=1) == labels)


def test_fit_accuracy_counted_in_the_step_equals_metrics_accuracy(monkeypatch):
    """fit takes the training accuracy from the compiled forward's count: the
    same history, bit for bit, as ``metrics.accuracy`` on the same logits."""
    def also_accuracy(out, y):
        return fastnn.metrics.accuracy(out, y)

    _, _, hist, built = _train("seed", np.float32, True, monkeypatch, epochs=3,
                               metrics=["accuracy", also_accuracy])
    assert built[0] is not None
    assert hist["accuracy"] == hist["also_accuracy"]
    assert 0 < min(hist["accuracy"]) <= max(hist["accuracy"]) <= 1


def test_modules_keep_their_state_after_a_compiled_fit(monkeypatch):
    model, _, _, built = _train("seed", np.float32, True, monkeypatch, epochs=1)
    assert built[0] is not None
    assert model[2].mask is not None and model[2].mask.shape[1] == 16
    assert model[0].x is not None and model[0].x.shape[1] == 20
    # the modules still work layer by layer afterwards
    out = model.forward(np.ones((4, 20), np.float32))
    assert model.backward(np.ones_like(out)).shape == (4, 20)


def test_nonfinite_loss_leaves_model_unchanged(monkeypatch):
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(4, 8), nn.BatchNorm(8), nn.ReLU(), nn.Linear(8, 3)])
    X = np.ones((40, 4), np.float32)
    X[17, 2] = np.inf
    y = np.zeros(40, np.int64)
    assert _step.SequentialProgram.build(model, nn.SoftmaxCrossEntropy(), X) is not None
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = optim.Adam(model.parameters())
    with pytest.raises(NonFiniteLossError) as info:
        fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=40, progress=False)
    assert "changed nothing" in str(info.value)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert opt.step_count == 0


class _Custom(nn.Module):
    def forward(self, x, training=None):
        return x

    def backward(self, dout):
        return dout


@pytest.mark.parametrize("case", ["custom-module", "subclass", "nested", "numpy-backend", "targets",
                                  "widths", "sync-bn", "finite-checks", "strided-X"])
def test_build_refuses_what_it_does_not_compile(case):
    class MyReLU(nn.ReLU):
        pass

    layers = [nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)]
    X = np.ones((10, 6), np.float32)
    loss = nn.SoftmaxCrossEntropy()
    if case == "custom-module":
        layers.insert(2, _Custom())
    elif case == "subclass":
        layers[1] = MyReLU()
    elif case == "nested":
        layers = [nn.Sequential(layers)]
    elif case == "widths":
        layers[2] = nn.Linear(5, 3)
    elif case == "sync-bn":
        bn = nn.BatchNorm(4)
        bn.sync = object()
        layers.insert(1, bn)
    elif case == "targets":
        loss = nn.MSELoss()
    elif case == "strided-X":
        X = np.ones((10, 12), np.float32)[:, ::2]
    model = nn.Sequential(layers, backend="numpy" if case == "numpy-backend" else None)
    if case == "finite-checks":
        with fastnn.check_finite():
            assert _step.SequentialProgram.build(model, loss, X) is None
    else:
        assert _step.SequentialProgram.build(model, loss, X) is None
    assert _step.SequentialProgram.why_not
    assert _step.SequentialProgram.build(nn.Sequential([nn.Linear(6, 3)]), nn.SoftmaxCrossEntropy(),
                                         np.ones((10, 6), np.float32)) is not None


def test_fit_with_mismatched_widths_still_explains(monkeypatch):
    model = nn.Sequential([nn.Linear(6, 4), nn.ReLU(), nn.Linear(5, 3)])
    with pytest.raises(ValueError):
        fastnn.fit(model, nn.SoftmaxCrossEntropy(), optim.Adam(model.parameters()),
                   np.ones((10, 6), np.float32), np.zeros(10, np.int64), epochs=1, progress=False)


def test_parallel_sized_batches_take_the_layer_path(monkeypatch):
    prog = _step.SequentialProgram.build(nn.Sequential([nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)]),
                                         nn.SoftmaxCrossEntropy(), np.ones((10, 6), np.float32))
    assert prog.serial_at(64)
    monkeypatch.setattr(fastnn._config, "STEP_PARALLEL_MIN_WORK", 100)
    assert not prog.serial_at(64)


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 1, 7), (64, 33, 17), (3, 4, 0), (0, 4, 3)])
def test_gemm_from_numba_is_numpys(dt, ta, tb, m, n, k):
    fns = _blas.functions()
    if fns is None:
        pytest.skip("no BLAS callable from numba here")
    rng = np.random.default_rng(m * 100 + n * 10 + k)
    A = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
    B = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
    C = np.full((m, n), np.nan, dt)
    K_blas.gemm_any(fns[0] if dt == np.float32 else fns[1], fns[2], C, A, B, ta, tb)
    expected = np.matmul(A.T if ta else A, B.T if tb else B)
    if 1 in (m, n):  # NumPy calls gemv or its own loop for a vector: other rounding
        np.testing.assert_allclose(C, expected, rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-6)
    else:  # the very routine np.matmul calls
        np.testing.assert_array_equal(C, expected)


def test_blas_lookup_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("FASTNN_NUMBA_BLAS", "0")
    assert _blas._find() is None


def _hand_loop(kind, use_program, monkeypatch, steps=4, need_input_grad=True, change_p=False):
    fastnn.manual_seed(5)
    model = nn.Sequential(_layers(kind, np.float32))
    opt = _sgd(model.parameters(), lr=1e-2)
    loss_fn = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(2)
    outs = []
    real_build = _step.SequentialProgram.build
    with monkeypatch.context() as mp:
        mp.setattr(_step.SequentialProgram, "build", real_build if use_program else (lambda *a: None))
        for s in range(steps):
            if change_p and s == 2:
                for m in model.layers:
                    if isinstance(m, nn.Dropout) and m.p > 0:
                        m.p = 0.5
            x = rng.standard_normal((16, 20)).astype(np.float32)
            y = rng.integers(0, 5, 16)
            out = model.forward(x)
            loss = loss_fn.forward(out, y)
            dx = model.backward(loss_fn.backward(), need_input_grad=need_input_grad)
            opt.step()
            outs.append((out, loss, dx))
    return model, outs


@pytest.mark.parametrize("kind", ["seed", "every-module"])
@pytest.mark.parametrize("need_input_grad", [True, False])
def test_hand_loop_through_the_program_equals_layer_path(kind, need_input_grad, monkeypatch):
    m1, o1 = _hand_loop(kind, False, monkeypatch, need_input_grad=need_input_grad)
    m2, o2 = _hand_loop(kind, True, monkeypatch, need_input_grad=need_input_grad)
    assert m2._ran is _step.PROGRAM_RAN and m1._ran is not _step.PROGRAM_RAN
    for (out1, loss1, dx1), (out2, loss2, dx2) in zip(o1, o2):
        _close(out2, out1)
        _close(np.array(loss2), np.array(loss1), dtype=np.float32)
        # without need_input_grad only a Linear first layer skips it (BatchNorm first: dx anyway)
        assert (dx1 is None) == (dx2 is None) == (not need_input_grad and kind == "seed")
        if dx1 is not None:
            _close(dx2, dx1)
    assert not np.shares_memory(o2[0][0], o2[1][0])  # each output is the caller's own
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        _close(p2, p1)


def test_program_follows_changed_hyperparameters(monkeypatch):
    m1, o1 = _hand_loop("seed", False, monkeypatch, change_p=True)
    m2, o2 = _hand_loop("seed", True, monkeypatch, change_p=True)
    for (out1, _, _), (out2, _, _) in zip(o1, o2):
        _close(out2, out1)
    np.testing.assert_array_equal(m1[2].mask, m2[2].mask)


def test_backward_checks_dout_after_a_compiled_forward():
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)])
    out = model.forward(np.ones((5, 6), np.float32))
    assert model._ran is _step.PROGRAM_RAN
    with pytest.raises(ValueError, match="shape"):
        model.backward(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="dout"):
        model.backward(np.ones_like(out).astype(np.float64))
    strided = np.ones((5, 6), np.float32)[:, ::2]  # not contiguous: converted, as on the layer path
    assert model.backward(strided).shape == (5, 6)


class _RaiseDropout(fastnn.callbacks.Callback):
    """Changes what the compiled step bakes in, in the middle of an epoch."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def on_batch_begin(self, batch, logs=None):
        self.calls += 1
        if self.calls == 3:
            self.model[2].p = 0.6


@pytest.mark.parametrize("dtype_y", [np.int64, np.int32])
def test_fit_follows_a_callback_that_changes_the_model(dtype_y, monkeypatch):
    results = []
    for use_program in (False, True):
        fastnn.manual_seed(3)
        model = nn.Sequential(_layers("seed", np.float32))
        opt = _sgd(model.parameters(), lr=1e-2)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((150, 20)).astype(np.float32)
        y = rng.integers(0, 5, 150).astype(dtype_y)
        real_build = _step.SequentialProgram.build
        with monkeypatch.context() as mp:
            mp.setattr(_step.SequentialProgram, "build", real_build if use_program else (lambda *a: None))
            hist = fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=2, batch_size=32, seed=1,
                              progress=False, callbacks=[_RaiseDropout(model)])
        results.append((hist["loss"], [p.copy() for p in model.parameters()]))
    _close(np.array(results[1][0]), np.array(results[0][0]), dtype=np.float32)
    for a, b in zip(results[0][1], results[1][1]):
        _close(b, a)


def test_seed_network_step_and_update_run_serially_on_2_and_16_threads(monkeypatch):
    """The thresholds (fastnn/_config.py; docs/design.md, "Sixteen cores"):
    on 2 and on 16 threads the seed network's step at batch 64-1024 and its
    Adam update stay below ``STEP_PARALLEL_MIN_WORK``; a (4096, 1024) ReLU
    forward between products goes parallel on 16 threads. On tbb, a kernel
    called on its own goes parallel from a quarter of that on 2 threads."""
    from fastnn import _config
    from fastnn.kernels.activations import COST

    monkeypatch.setattr(_config, "_MIN_WORK_ENV", None)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 128), nn.ReLU(),
                           nn.Dropout(0.2), nn.Linear(128, 10)])
    program = _step.SequentialProgram.build(model, nn.SoftmaxCrossEntropy(), np.zeros((8, 784), np.float32))
    adam_work = optim.Adam.UPDATE_WORK * sum(p.size for p in model.parameters())
    assert _config._step_parallel_min_work(2) == 1 << 20
    for threads in (2, 16):
        monkeypatch.setattr(_config, "STEP_PARALLEL_MIN_WORK", _config._step_parallel_min_work(threads))
        assert all(program.serial_at(n) for n in (64, 256, 1024)), threads
        assert adam_work < _config.STEP_PARALLEL_MIN_WORK, threads
    assert 4096 * 1024 * COST["relu_forward"][0] >= _config._step_parallel_min_work(16)
    assert _config._parallel_min_work(2, tbb=True) == 1 << 18
    assert _config._parallel_min_work(2, tbb=False) == 1 << 20
    for threads in (2, 16):
        assert _config._parallel_min_work(threads, tbb=True) < _config._step_parallel_min_work(threads)
    assert _config._parallel_min_work(1, tbb=True) > 1 << 60
    assert _config._step_parallel_min_work(1) > 1 << 60


def _spy_builds(monkeypatch, kern):
    """Record which build of ``kern`` runs: 'serial' or 'parallel'."""
    ran = []
    for build in ("serial", "parallel"):
        fn = getattr(kern, build)
        monkeypatch.setattr(kern, build, lambda *a, _fn=fn, _b=build: (ran.append(_b), _fn(*a))[1])
    return ran


def test_kernels_between_products_use_the_step_threshold(monkeypatch):
    """A kernel whose work lies between the two thresholds runs in parallel
    when called on its own (a functional op, a lone module) and serially
    inside a Sequential's forward and backward and an optimizer's update,
    where it runs between BLAS products."""
    from fastnn import _config
    from fastnn import functional as F
    from fastnn.kernels import activations as K_act
    from fastnn.kernels import optim as K_opt

    monkeypatch.setattr(_config, "PARALLEL_MIN_WORK", 10)
    monkeypatch.setattr(_config, "STEP_PARALLEL_MIN_WORK", 1 << 40)
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    ran = _spy_builds(monkeypatch, K_act.relu_forward)
    y_alone = F.relu(x)
    assert ran == ["parallel"]
    ran.clear()
    y_module = nn.ReLU().forward(x)
    assert ran == ["parallel"]
    ran.clear()
    model = nn.Sequential([nn.ReLU(), nn.Linear(32, 8)])
    model.forward(x, training=False)
    assert ran == ["serial"]
    back = _spy_builds(monkeypatch, K_act.relu_backward)
    with fastnn.check_finite():  # the layer path in training (the compiled step calls no Kernel)
        model.forward(x, training=True)
        model.backward(np.ones((64, 8), np.float32))
    assert ran == ["serial", "serial"] and back == ["serial"]
    np.testing.assert_array_equal(y_alone, y_module)
    np.testing.assert_array_equal(y_alone, np.maximum(x, 0))
    F.activation_backward("relu", np.ones_like(x), x)
    assert back[-1] == "parallel"

    opt = optim.Adam(model.parameters())
    upd = _spy_builds(monkeypatch, K_opt.multi_adam_update)
    opt.step()
    assert upd == ["serial"]
    assert not getattr(_config._local, "between_products", False)
