"""Build-your-own-model behaviour: modules registered by attribute, and the
silent failures of fit that now raise or warn (issue 13)."""

import warnings

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim
from fastnn.train import EarlyStopping, NonFiniteLossError, fit, predict


class Scale(nn.Module):
    """y = x * s with one learnable slope per feature; forward without ``training``."""

    def __init__(self, dim):
        self.s = nn.Parameter(np.ones(dim, np.float32))

    def forward(self, x):
        self.x = x
        return x * self.s

    def backward(self, dout):
        self.s.grad[...] = (dout * self.x).sum(axis=0)
        return dout * self.s


class Net(nn.Module):
    """A Parameter attribute, a nested Sequential, a list of modules filled after assignment."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential([nn.Linear(6, 8), nn.BatchNorm(8), nn.ReLU(), nn.Dropout(0.1)])
        self.scales = []
        self.scales.append(Scale(8))
        self.head = nn.Linear(8, 3)
        self.bias = nn.Parameter(np.zeros(3, np.float32))

    def forward(self, x, training=None):
        h = self.body.forward(x, training=training)
        h = self.scales[0].forward(h, training=training)
        return self.head.forward(h, training=training) + self.bias

    def backward(self, dout):
        self.bias.grad[...] = dout.sum(axis=0)
        d = self.head.backward(dout)
        d = self.scales[0].backward(d)
        return self.body.backward(d)


NAMES = ["bias", "body.0.W", "body.0.b", "body.1.gamma", "body.1.beta", "scales.0.s", "head.W", "head.b"]


def toy(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    return X, y


def test_attributes_register_parameters_modules_and_lists(tmp_path):
    fastnn.manual_seed(0)
    net = Net()
    assert sorted(n for n, _ in net.named_parameters()) == sorted(NAMES)
    assert len(net.parameters()) == len(NAMES)
    assert {"body.1.running_mean", "body.1.running_var", "body.3.seed", "body.3.step"} <= set(net.state_dict())
    net.eval()
    assert not net.body[1].training and not net.scales[0].training and not net.head.training
    net.train()
    assert net.body[3].training
    net.backend = "numpy"
    assert net.body[0].backend == "numpy" and net.head.backend == "numpy"
    net.backend = None
    text = repr(net)
    assert "(body): Sequential" in text and "(scales.0): Scale" in text and "(bias): Parameter(3,)" in text
    # save/load reaches every weight
    path = tmp_path / "net.npz"
    fastnn.save(path, net)
    other = Net()
    other.scales[0].s[...] = 7
    fastnn.load(path, other)
    for (name, a), (_, b) in zip(net.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # reassigning a registered parameter with a plain array is refused, None unregisters
    with pytest.raises(TypeError, match="wrap it in nn.Parameter"):
        net.bias = np.zeros(3, np.float32)
    net.bias = None
    assert "bias" not in dict(net.named_parameters())


def test_fit_trains_every_registered_parameter():
    fastnn.manual_seed(1)
    net = Net()
    before = {n: np.array(p) for n, p in net.named_parameters()}
    X, y = toy()
    fit(net, nn.SoftmaxCrossEntropy(), optim.Adam(net.parameters(), lr=1e-2), X, y, epochs=2,
        batch_size=32, progress=False)
    for name, p in net.named_parameters():
        assert not np.array_equal(before[name], p), name
    assert np.any(net.body[1].running_mean != 0)


def test_forward_without_training_argument_follows_the_mode():
    s = Scale(3)
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(s.forward(x, training=False), x)
    assert s.training  # the given mode lasted one call
    seq = nn.Sequential([nn.Linear(3, 3), Scale(3)])
    assert seq.forward(x).shape == (2, 3)


def test_fit_refuses_another_models_optimizer():
    X, y = toy()
    a, b = nn.Sequential([nn.Linear(6, 3)]), nn.Sequential([nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)])
    w = [np.array(p) for p in b.parameters()]
    with pytest.raises(ValueError, match=r"not this model's .*shapes \[\(6, 3\), \(3,\)\]"):
        fit(b, nn.SoftmaxCrossEntropy(), optim.SGD(a.parameters(), lr=0.1), X, y, progress=False)
    for p, q in zip(w, b.parameters()):
        np.testing.assert_array_equal(p, q)
    with pytest.warns(UserWarning, match=r"does not update the model parameters \['2.W', '2.b'\]"):
        fit(b, nn.SoftmaxCrossEntropy(), optim.SGD(b.parameters()[:2], lr=0.1), X, y, epochs=1,
            progress=False)


def test_labels_are_checked_before_the_first_step():
    X, y = toy(1000)
    fastnn.manual_seed(2)
    model = nn.Sequential([nn.Linear(6, 3)])
    w = np.array(model[0].W)
    bad = y.copy()
    bad[777] = 3
    with pytest.raises(ValueError, match=r"y\[777\] = 3 \(dataset row 777\) is not a class index in \[0, 3\)"):
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, bad,
            batch_size=100, progress=False)
    np.testing.assert_array_equal(model[0].W, w)
    with pytest.raises(ValueError, match=r"shape \(1000, 1\).*y.ravel\(\)"):
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X,
            y.reshape(-1, 1), progress=False)
    with pytest.raises(TypeError, match="integer class indices.*got dtype float64"):
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X,
            y.astype(np.float64), progress=False)
    # validation labels: their own rows, in validation_split the dataset's rows
    with pytest.raises(ValueError, match=r"y_val\[5\] = -1 \(dataset row 5\)"):
        yv = y[:10].copy()
        yv[5] = -1
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, y,
            validation_data=(X[:10], yv), progress=False)
    with pytest.raises(ValueError, match=r"dataset row 950\)"):
        bad = y.copy()
        bad[950] = 9
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, bad,
            validation_split=0.1, progress=False)
    np.testing.assert_array_equal(model[0].W, w)


def bn_model(seed=3):
    fastnn.manual_seed(seed)
    return nn.Sequential([nn.Linear(6, 8), nn.BatchNorm(8), nn.ReLU(), nn.Linear(8, 3)])


def test_non_finite_batch_changes_nothing():
    X, y = toy(50)
    X[25, 2] = np.nan  # the third batch of 10
    ref = bn_model()
    ref_opt = optim.Adam(ref.parameters(), lr=1e-2)
    fit(ref, nn.SoftmaxCrossEntropy(), ref_opt, X[:20], y[:20], epochs=1, batch_size=10,
        shuffle=False, progress=False)
    model = bn_model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 3.*changed nothing") as info:
        fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=10, shuffle=False,
            progress=False)
    assert info.value.step == 3
    for name, a in ref.state_dict().items():
        if name.endswith(("seed", "step")):
            continue
        np.testing.assert_array_equal(model.state_dict()[name], a, err_msg=name)
    for i, st in ref_opt.state_dict()["state"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(opt.state_dict()["state"][i][k], v)
    assert np.isfinite(predict(model, np.nan_to_num(X))).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
def test_non_finite_validation_value_warns_and_never_improves():
    X, y = toy()
    Xv = X[:20].copy()
    Xv[3, 0] = np.inf
    model = nn.Sequential([nn.Linear(6, 3)])
    with pytest.warns(RuntimeWarning, match="val_loss is nan: not counted as an improvement"):
        hist = fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, y,
                   epochs=3, validation_data=(Xv, y[:20]), early_stopping=EarlyStopping(patience=2),
                   progress=False)
    assert hist.best_epoch is None and hist.stopped_early and len(hist.epoch) == 2


class SquaredError(nn.Module):
    """A hand-written regression loss (not a classification loss)."""

    def forward(self, out, y):
        self.d = out - y
        return float((self.d ** 2).mean())

    def backward(self, dout=None):
        return 2 * self.d / self.d.size


def test_no_accuracy_for_a_custom_regression_loss():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6)).astype(np.float32)
    y = X[:, :1] * 2
    model = nn.Sequential([nn.Linear(6, 1)])
    hist = fit(model, SquaredError(), optim.SGD(model.parameters(), lr=0.05), X, y, epochs=2,
               validation_data=(X, y), progress=False)
    assert hist.val_accuracy == [] and "val_accuracy" not in hist.keys()
    assert len(hist["val_loss"]) == 2
    assert np.isnan(fastnn.evaluate(model, SquaredError(), X, y)[1])


def test_one_sample_last_batch_with_batchnorm_is_dropped_with_a_warning():
    X, y = toy(65)
    model = bn_model()
    with pytest.warns(UserWarning, match="last batch of each epoch would hold 1 sample"):
        hist = fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, y,
                   epochs=1, batch_size=32, progress=False)
    assert np.isfinite(hist.loss[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, y,
            epochs=1, batch_size=32, drop_last=True, progress=False)


# ------------------------------------------------------------ metrics and history


def regression_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.3).astype(np.float32)
    return X, y


@pytest.mark.parametrize("loss", [nn.MSELoss(), nn.L1Loss(), nn.HuberLoss(1.0)], ids=repr)
def test_regression_fit_with_metrics(loss):
    X, y = regression_data()
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(5, 1)])
    hist = fit(model, loss, optim.Adam(model.parameters(), lr=0.05), X, y, epochs=30, batch_size=32,
               metrics=["mae", "mse"], validation_split=0.25, progress=False)
    assert set(hist.keys()) == {"loss", "val_loss", "mae", "mse", "val_mae", "val_mse", "lr"}
    assert hist["val_mae"][-1] < 0.1 * hist["val_mae"][0] and hist["mae"][-1] < 0.2
    assert hist.val_accuracy == []
    assert hist["lr"] == [0.05] * 30
    # the validation values are those of evaluate on the held-out last quarter
    logs = fastnn.evaluate(model, loss, X[150:], y[150:], metrics=["mae"])
    assert logs["mae"] == pytest.approx(hist["val_mae"][-1], rel=1e-5)
    assert logs["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-5)


def test_classification_history_has_train_and_validation_accuracy():
    X, y = toy(300)
    fastnn.manual_seed(4)
    model = nn.Sequential([nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)])
    hist = fit(model, nn.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-2), X, y,
               epochs=20, validation_data=(X[:100], y[:100]), progress=False,
               early_stopping=EarlyStopping(monitor="accuracy", patience=50))
    assert len(hist["accuracy"]) == len(hist.val_accuracy) == 20
    assert hist["accuracy"][-1] > 0.8 and hist.val_accuracy[-1] > 0.8
    assert hist.best_epoch == 1 + int(np.argmax(hist["accuracy"]))
    p = fastnn.predict_proba(model, X[:10])
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(axis=1), predict(model, X[:10]).argmax(axis=1))


def test_multilabel_bce_with_pos_weight_and_binary_accuracy():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 4)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0.5], axis=1).astype(np.float32)
    fastnn.manual_seed(5)
    model = nn.Sequential([nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)])
    loss = nn.BCEWithLogitsLoss(pos_weight=[1.0, 2.0])
    hist = fit(model, loss, optim.Adam(model.parameters(), lr=1e-2), X, Y, epochs=15,
               validation_split=0.2, progress=False)
    assert set(hist.keys()) == {"loss", "val_loss", "accuracy", "val_accuracy", "lr"}
    assert hist.val_accuracy[-1] > 0.9
    proba = fastnn.predict_proba(model, X[320:], kind="sigmoid")
    acc = np.mean((proba > 0.5) == (Y[320:] > 0.5))
    assert acc == pytest.approx(hist.val_accuracy[-1], abs=1e-6)
    with pytest.raises(ValueError, match=r"targets in \[0, 1\].*dataset row 7"):
        Y2 = Y.copy()
        Y2[7, 1] = 2
        fit(model, loss, optim.Adam(model.parameters()), X, Y2, epochs=1, progress=False)


def test_binary_bce_accepts_one_dimensional_targets():
    X, y = toy(200)
    yb = (y > 0).astype(np.int64)
    model = nn.Sequential([nn.Linear(6, 1)])
    hist = fit(model, nn.BCEWithLogitsLoss(), optim.Adam(model.parameters(), lr=0.05), X, yb,
               epochs=5, progress=False)
    assert hist["accuracy"][-1] > 0.7


def test_custom_metric_and_validation_arguments():
    X, y = toy()
    model = nn.Sequential([nn.Linear(6, 3)])

    def top2(out, yb):
        return float(np.mean((np.argsort(out, axis=1)[:, -2:] == yb[:, None]).any(axis=1)))

    hist = fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, y,
               epochs=2, metrics=["accuracy", top2], progress=False)
    assert len(hist["top2"]) == 2 and all(a <= b for a, b in zip(hist["accuracy"], hist["top2"]))
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, metrics=["f1"], progress=False)
    with pytest.raises(ValueError, match="not both"):
        fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, validation_split=0.2,
            validation_data=(X, y), progress=False)
    with pytest.raises(ValueError, match="validation_split"):
        fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, validation_split=1.5, progress=False)
    with pytest.raises(ValueError, match=r"shape \(N, 1\)"):
        one = nn.Sequential([nn.Linear(6, 1)])
        fit(one, nn.MSELoss(), optim.SGD(one.parameters(), lr=0.1), X, np.zeros((len(X), 2), np.float32),
            progress=False)


def test_drop_last_counts_steps():
    X, y = toy(70)
    model = nn.Sequential([nn.Linear(6, 3)])

    class Count(fastnn.callbacks.Callback):
        n = 0

        def on_batch_end(self, batch, logs=None):
            self.n += 1

    for drop_last, steps in ((False, 3), (True, 2)):
        c = Count()
        fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, y, epochs=1,
            batch_size=32, drop_last=drop_last, callbacks=[c], progress=False)
        assert c.n == steps


def test_summary_lists_modules_widths_and_totals():
    m = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10)])
    text = m.summary(784)
    assert "Linear(784, 256)  (N, 256)  200,960" in text and "(N, 10)" in text
    assert text.endswith("trainable parameters: 203,530")
    assert m.training  # the probe ran in eval mode and restored the mode
    text = Net().summary()
    assert "(own)" in text and "scales.0  Scale" in text and text.endswith("parameters: 110")
