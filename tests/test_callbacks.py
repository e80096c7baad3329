"""fastnn.callbacks: hook order, ModelCheckpoint (best only), CSVLogger,
stop_training, and their interplay with early stopping and schedules."""

import csv

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim
from fastnn.callbacks import Callback, CSVLogger, ModelCheckpoint
from fastnn.lr_scheduler import StepLR
from fastnn.train import EarlyStopping, fit


def data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return X, y


def model(seed=0):
    fastnn.manual_seed(seed)
    return nn.Sequential([nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)])


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch, logs["size"]))

    def on_batch_end(self, batch, logs=None):
        assert np.isfinite(logs["loss"])
        self.calls.append(("batch_end", batch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, sorted(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))


def test_hooks_run_in_order_with_the_epoch_logs():
    X, y = data(100)
    m = model()
    rec = Recorder()
    fit(m, nn.SoftmaxCrossEntropy(), optim.SGD(m.parameters(), lr=0.1), X, y, epochs=2, batch_size=64,
        validation_data=(X, y), callbacks=[rec], progress=False)
    keys = ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    epoch = [("batch_begin", 0, 64), ("batch_end", 0), ("batch_begin", 1, 36), ("batch_end", 1)]
    assert rec.calls == ([("train_begin",)]
                         + [("epoch_begin", 0)] + epoch + [("epoch_end", 0, keys)]
                         + [("epoch_begin", 1)] + epoch + [("epoch_end", 1, keys)]
                         + [("train_end",)])
    assert rec.model is m and rec.history.epoch == [1, 2]


def test_stop_training_from_a_callback():
    class StopAt(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.stop_training = epoch == 1

    X, y = data()
    m = model()
    hist = fit(m, nn.SoftmaxCrossEntropy(), optim.SGD(m.parameters(), lr=0.1), X, y, epochs=10,
               callbacks=[StopAt()], progress=False)
    assert hist.epoch == [1, 2]


def test_model_checkpoint_keeps_the_best_epoch_with_early_stopping(tmp_path):
    X, y = data()
    Xv, yv = data(60, seed=1)
    m = model()
    opt = optim.Adam(m.parameters(), lr=0.05)
    path = tmp_path / "best.npz"
    ckpt = ModelCheckpoint(path, monitor="val_loss")
    log = tmp_path / "log.csv"
    hist = fit(m, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=12, validation_data=(Xv, yv), seed=3,
               early_stopping=EarlyStopping(patience=3), callbacks=[ckpt, CSVLogger(log)],
               scheduler=StepLR(opt, step_size=4, gamma=0.5), progress=False)
    best = int(np.argmin(hist.val_loss)) + 1
    assert ckpt.best_epoch == hist.best_epoch == best
    assert ckpt.best == pytest.approx(min(hist.val_loss))
    # the checkpoint holds the best epoch's weights: the same as those early stopping restored
    other = model(seed=9)
    meta = fastnn.load(path, other, optim.Adam(other.parameters(), lr=0.05))
    assert int(meta["epoch"]) == best and int(meta["seed"]) == 3
    for a, b in zip(m.parameters(), other.parameters()):
        np.testing.assert_array_equal(a, b)
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == hist.epoch
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(hist.val_loss, rel=1e-12)
    assert [float(r["lr"]) for r in rows] == pytest.approx(hist["lr"])
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}


def test_checkpoint_skips_non_finite_values_and_names_unknown_monitors(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "x.npz", monitor="val_loss")
    ckpt.model = model()
    with pytest.warns(RuntimeWarning, match="not counted"):
        ckpt.on_epoch_end(0, {"val_loss": float("nan")})
    assert ckpt.best_epoch is None and not (tmp_path / "x.npz").exists()
    with pytest.raises(ValueError, match="monitors 'val_loss'.*records \\['loss'\\]"):
        ckpt.on_epoch_end(1, {"loss": 1.0})


def test_csv_logger_appends_without_a_second_header(tmp_path):
    X, y = data()
    m = model()
    log = tmp_path / "log.csv"
    for append in (False, True):
        fit(m, nn.SoftmaxCrossEntropy(), optim.SGD(m.parameters(), lr=0.1), X, y, epochs=2,
            callbacks=[CSVLogger(log, append=append)], progress=False)
    lines = log.read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("epoch,")


def test_callbacks_must_be_callbacks():
    X, y = data()
    m = model()
    with pytest.raises(TypeError, match="Callback instances"):
        fit(m, nn.SoftmaxCrossEntropy(), optim.SGD(m.parameters(), lr=0.1), X, y, callbacks=[print],
            progress=False)
