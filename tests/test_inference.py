"""The eval-mode fast path of Sequential.forward (fastnn/_inference.py)."""

import numpy as np
import pytest

import fastnn
from fastnn import nn


def layer_by_layer(model, x):
    for layer in model.layers:
        x = layer.forward(x, training=False)
    return x


def every_layer_model(fuse=True, dtype=np.float32):
    fastnn.manual_seed(0)
    model = nn.Sequential([
        nn.Linear(20, 32, dtype=dtype), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(32, 24, dtype=dtype), nn.BatchNorm(24, dtype=dtype), nn.LeakyReLU(0.2),
        nn.Linear(24, 24, dtype=dtype), nn.Sigmoid(),
        nn.Linear(24, 16, dtype=dtype), nn.Tanh(), nn.Dropout(0.1),
        nn.Linear(16, 16, dtype=dtype), nn.GELU(), nn.LayerNorm(16, dtype=dtype),
        nn.Linear(16, 12, bias=False, dtype=dtype), nn.SiLU(),
        nn.Linear(12, 5, dtype=dtype),
    ], fuse=fuse)
    rng = np.random.default_rng(0)
    for _ in range(2):
        model.forward(rng.normal(size=(32, 20)).astype(dtype))
    return model.eval()


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_equals_the_layers_eval_forwards(fuse, dtype):
    model = every_layer_model(fuse, dtype)
    steps = [d.step for d in model if isinstance(d, nn.Dropout)]
    rng = np.random.default_rng(1)
    for n in (1, 8, 64, 1):
        x = rng.normal(size=(n, 20)).astype(dtype)
        y = model.forward(x)
        assert y.dtype == dtype and y.shape == (n, 5)
        np.testing.assert_allclose(y, layer_by_layer(model, x), rtol=1e-5, atol=1e-6)
    assert [d.step for d in model if isinstance(d, nn.Dropout)] == steps == [2, 2]


def test_outputs_are_fresh_and_nothing_is_saved():
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)]).eval()
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    a = model.forward(x)
    expect = a.copy()
    b = model.forward(x[::-1].copy())
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, expect)  # the second call did not overwrite the first's output
    a[...] = 0
    np.testing.assert_array_equal(model.forward(x), expect)
    assert model[0].x is None and model[1].saved is None  # no saved activations
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones((4, 10), np.float32))


def test_backward_after_an_eval_forward_does_not_use_an_older_forward():
    model = every_layer_model()
    x = np.random.default_rng(2).normal(size=(8, 20)).astype(np.float32)
    model.train().forward(x)
    model.eval().forward(x)
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones((8, 5), np.float32))


def test_unusual_inputs_take_the_ordinary_path():
    model = every_layer_model()
    x = np.random.default_rng(3).normal(size=(6, 20))
    ref = layer_by_layer(model, x.astype(np.float32))
    np.testing.assert_allclose(model.forward(x.tolist()), ref, rtol=1e-5, atol=1e-6)  # a list
    wide = np.zeros((6, 40), np.float32)
    wide[:, ::2] = x
    np.testing.assert_allclose(model.forward(wide[:, ::2]), ref, rtol=1e-5, atol=1e-6)  # strided
    with pytest.raises(ValueError, match=r"x must have shape \(N, 20\)"):
        model.forward(np.zeros((6, 21), np.float32))
    with pytest.raises(ValueError, match="x"):
        model.forward(np.zeros((0, 20), np.float32))
    with pytest.raises(ValueError, match="x"):
        model.forward(np.zeros(20, np.float32))
    with fastnn.use_backend("numpy"):
        np.testing.assert_allclose(model.forward(x.astype(np.float32)), ref, rtol=1e-5, atol=1e-6)


def test_training_after_eval_forwards_is_unchanged():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(16, 20)).astype(np.float32), np.arange(16) % 5
    a, b = every_layer_model().train(), every_layer_model().train()
    a.eval().forward(x[:3])
    a.train()
    la = a.train_on_batch(x, y, epochs=3, optimizer="sgd", lr=0.1)
    lb = b.train_on_batch(x, y, epochs=3, optimizer="sgd", lr=0.1)
    assert la == lb
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)
