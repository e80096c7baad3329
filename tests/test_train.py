"""fastnn.train: the seed's loop, fit/evaluate/predict, early stopping, the
non-finite loss error, the checklist functions, and reproducibility."""

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim
from fastnn.data import synthetic_mnist
from fastnn.train import (EarlyStopping, History, NonFiniteLossError, evaluate, fit, gradcheck,
                          overfit_single_batch, predict, train)


@pytest.fixture(scope="module")
def data():
    (X, y), (Xv, yv) = synthetic_mnist(n_train=640, n_test=200, seed=5)
    return X, y, Xv, yv


def mnist_model(seed=0, dtype=np.float32):
    """The seed's recommended MNIST architecture."""
    fastnn.manual_seed(seed)
    return nn.Sequential([
        nn.Linear(784, 256, dtype=dtype), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 128, dtype=dtype), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 10, dtype=dtype),
    ])


def weights(model):
    return [np.array(p) for p in model.parameters()]


# ------------------------------------------------------------- the seed's loop


def test_seed_train_loop_as_written(data, capsys):
    X, y, _, _ = data
    np.random.seed(0)
    model = mnist_model()
    losses = train(model, X, y, epochs=3, lr=0.1, batch_size=64)
    out = capsys.readouterr().out.splitlines()
    assert out == [f"Epoch {k + 1}: Loss = {loss:.4f}" for k, loss in enumerate(losses)]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_seed_train_loop_with_explicit_loss_and_errors(data):
    X, y, _, _ = data
    model = nn.Sequential([nn.Linear(784, 10)], loss=nn.SoftmaxCrossEntropy())
    out = model.forward(X[:8])
    loss = model.compute_loss(out, y[:8])
    model.backward()
    before = np.array(model[0].W)
    model.update(0.5)
    np.testing.assert_allclose(model[0].W, before - 0.5 * model[0].W.grad, rtol=1e-6, atol=1e-7)
    assert loss > 0
    with pytest.raises(TypeError, match="compute_loss"):
        train(nn.Linear(784, 10), X, y)
    with pytest.raises(ValueError, match="lr"):
        train(model, X, y, lr=0)


# --------------------------------------------------------------------- fit


def test_fit_learns_and_reports_history(data, capsys):
    X, y, Xv, yv = data
    model = mnist_model()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    hist = fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=3, batch_size=64,
               validation_data=(Xv, yv), seed=1, progress=True)
    assert isinstance(hist, History)
    assert hist.epoch == [1, 2, 3] and hist.seed == 1
    assert len(hist.loss) == len(hist.val_loss) == len(hist.val_accuracy) == 3
    assert hist["loss"] is hist.loss
    assert hist.loss[-1] < hist.loss[0]
    assert hist.val_accuracy[-1] > 0.8
    assert opt.step_count == 3 * 10
    assert model.training
    # stdout is not a terminal here: one line per epoch instead of a bar
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("Epoch 1/3: loss = ")
    assert "val_accuracy" in lines[0]


def test_fit_progress_false_is_silent(data, capsys):
    X, y, _, _ = data
    model = mnist_model()
    fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X[:100], y[:100],
        epochs=1, progress=False)
    assert capsys.readouterr().out == ""


def test_fit_bar_when_stdout_is_a_terminal(data, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    X, y, _, _ = data
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    model = mnist_model()
    fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X[:100], y[:100],
        epochs=1, batch_size=50)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "2/2" in out


def test_fit_one_hot_targets_and_single_linear(data):
    X, y, Xv, yv = data
    fastnn.manual_seed(0)
    model = nn.Linear(784, 10)
    onehot = np.eye(10, dtype=np.float32)[y]
    hist = fit(model, nn.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-2), X, onehot,
               epochs=2, validation_data=(Xv, np.eye(10, dtype=np.float32)[yv]), progress=False)
    assert hist.val_accuracy[-1] > 0.8


def test_early_stopping_restores_best_weights(data):
    X, y, _, _ = data
    X, y = X[:128], y[:128]

    def run(epochs, early_stopping=None):
        model = mnist_model(seed=2)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        hist = fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=epochs, seed=4,
                   early_stopping=early_stopping, progress=False)
        return model, hist

    one, _ = run(1)
    # min_delta so large that no epoch after the first counts as an improvement
    model, hist = run(10, EarlyStopping(patience=2, min_delta=1e9))
    assert hist.stopped_early and hist.best_epoch == 1 and hist.epoch == [1, 2, 3]
    for a, b in zip(weights(model), weights(one)):
        np.testing.assert_array_equal(a, b)
    # Dropout's counters keep counting: 3 epochs of 2 steps ran
    assert model[2].step == 6
    # an int is a patience; without stopping the last weights stay
    _, hist = run(2, early_stopping=3)
    assert not hist.stopped_early and hist.best_epoch == 2
    with pytest.raises(ValueError, match="validation_data"):
        run(1, EarlyStopping(monitor="val_loss"))
    # any recorded value may be monitored ("accuracy" is now one); others are refused
    with pytest.raises(ValueError, match="monitor 'mae' is not recorded"):
        run(1, EarlyStopping(monitor="mae"))
    with pytest.raises(TypeError, match="monitor"):
        EarlyStopping(monitor=3)


def test_non_finite_loss_names_epoch_and_step(data):
    X, y, _, _ = data
    X = X[:50].copy()
    X[25, 3] = np.nan  # in the third batch of 10
    fastnn.manual_seed(0)
    model = nn.Linear(784, 10)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3.*learning rate.*clipping") as info:
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, y[:50],
            epochs=1, batch_size=10, shuffle=False, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert (info.value.epoch, info.value.step) == (1, 3)


@pytest.mark.filterwarnings("ignore:.*encountered in matmul:RuntimeWarning")
def test_exploding_loss_is_caught_and_clipping_option(data):
    X, y, _, _ = data
    model = mnist_model()
    with pytest.raises(NonFiniteLossError):
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=1e6), X, y,
            epochs=2, progress=False)
    model = mnist_model()
    hist = fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.5), X, y,
               epochs=1, clip_grad_norm=1.0, progress=False)
    assert np.isfinite(hist.loss[0])


def test_fit_rejects_bad_arguments(data):
    X, y, _, _ = data
    model = mnist_model()
    loss, opt = nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="same length"):
        fit(model, loss, opt, X, y[:10])
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, loss, opt, X, y, batch_size=0)
    with pytest.raises(TypeError, match="optimizer"):
        fit(model, loss, None, X, y)
    with pytest.raises(TypeError, match="loss_fn"):
        fit(model, None, opt, X, y)
    with pytest.raises(ValueError, match="initial_epoch"):
        fit(model, loss, opt, X, y, epochs=1, initial_epoch=2)
    with pytest.raises(TypeError, match="float32"):
        fit(model, loss, opt, X.astype(np.float64), y)
    with pytest.raises(ValueError, match="seed"):
        fit(model, loss, opt, X, y, seed=-1)


def test_evaluate_and_predict_use_eval_mode_and_restore_it(data):
    X, y, _, _ = data
    model = mnist_model()
    p1 = predict(model, X, batch_size=100)
    p2 = predict(model, X, batch_size=64)
    assert model.training
    assert p1.shape == (len(X), 10) and not np.shares_memory(p1, X)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)  # no dropout noise
    np.testing.assert_allclose(p1, model.forward(X, training=False), rtol=1e-5, atol=1e-6)
    loss, acc = evaluate(model, nn.SoftmaxCrossEntropy(), X, y, batch_size=100)
    expected = nn.SoftmaxCrossEntropy().forward(p1, y)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert acc == pytest.approx(np.mean(p1.argmax(1) == y))
    model.eval()
    predict(model, X[:3])
    assert not model.training
    # predict's result is not overwritten by later calls
    p3 = predict(model, X[:5])
    predict(model, X[5:10])
    np.testing.assert_allclose(p3, p1[:5], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- checklist


def test_overfit_single_batch_the_seeds_check(data):
    X, y, _, _ = data
    model = mnist_model()
    loss = overfit_single_batch(model, nn.SoftmaxCrossEntropy(), X[:32], y[:32], steps=100)
    assert loss < 0.01


def test_overfit_single_batch_fails_for_a_broken_backward(data):
    class BrokenReLU(nn.ReLU):
        def backward(self, dout):
            return -super().backward(dout)  # wrong sign

    X, y, _, _ = data
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(784, 64), BrokenReLU(), nn.Linear(64, 10)], fuse=False)
    loss = overfit_single_batch(model, nn.SoftmaxCrossEntropy(), X[:32], y[:32], steps=100)
    assert loss > 0.1


def test_gradcheck_correct_model_is_small():
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(7, 6), nn.Tanh(), nn.Dropout(0.3), nn.LayerNorm(6),
                           nn.Linear(6, 4), nn.BatchNorm(4), nn.GELU()])
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    before = weights(model)
    assert gradcheck(model, x) < 1e-6
    assert gradcheck(model, x, np.array([0, 1, 2, 3, 0]), nn.SoftmaxCrossEntropy(),
                     max_checks=None) < 1e-6
    for a, b in zip(before, weights(model)):  # the original is untouched
        np.testing.assert_array_equal(a, b)
    assert model[0].W.dtype == np.float32
    assert gradcheck(nn.Linear(3, 2), x[:, :3]) < 1e-7


def test_gradcheck_finds_a_wrong_gradient():
    class HalfGradLinear(nn.Linear):
        def backward(self, dout, need_dx=True):
            dx = super().backward(dout, need_dx)
            self.W.grad *= 0.5
            return dx

    fastnn.manual_seed(0)
    model = nn.Sequential([HalfGradLinear(5, 3), nn.ReLU()], fuse=False)
    x = np.random.default_rng(1).standard_normal((4, 5))
    assert gradcheck(model, x) > 0.1


# --------------------------------------------------------- reproducibility


def test_same_seed_same_threads_gives_bitwise_identical_weights(data):
    X, y, Xv, yv = data
    assert fastnn.get_backend() == "numba"

    def run(seed, shuffle_seed):
        model = mnist_model(seed)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=2, seed=shuffle_seed, progress=False)
        return weights(model)

    a, b = run(0, 1), run(0, 1)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    c = run(0, 2)  # another batch order
    assert not all(np.array_equal(wa, wc) for wa, wc in zip(a, c))


def test_fit_without_seed_follows_manual_seed(data):
    X, y, _, _ = data

    def run():
        model = mnist_model(3)  # manual_seed(3) also fixes the shuffling seed drawn by fit
        hist = fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.05),
                   X[:200], y[:200], epochs=1, progress=False)
        return hist.seed, weights(model)

    (sa, wa), (sb, wb) = run(), run()
    assert sa == sb
    for a, b in zip(wa, wb):
        np.testing.assert_array_equal(a, b)
