"""Sequential.train_on_batch: the seed's debugging-checklist line runs as written."""

import numpy as np
import pytest

import fastnn
from fastnn import nn
from fastnn.data import find_mnist, load_mnist, synthetic_mnist
from fastnn.nn import Dropout, Linear, ReLU, Sequential


def seed_network(seed=0):
    fastnn.manual_seed(seed)
    return Sequential([  # the seed's "recommended architecture"
        Linear(784, 256), ReLU(), Dropout(0.2),
        Linear(256, 128), ReLU(), Dropout(0.2),
        Linear(128, 10),
    ])


def data(kind):
    if kind == "fashion":
        if find_mnist("fashion") is None:
            pytest.skip("Fashion-MNIST is not installed")
        (X, y), _ = load_mnist(kind="fashion")
        return X[:64], y[:64]
    (X, y), _ = synthetic_mnist(n_train=64, n_test=0, seed=1)
    return X, y


@pytest.mark.parametrize("kind", ["synthetic", "fashion"])
def test_the_seeds_line_overfits_one_batch(kind):
    X, y = data(kind)
    model = seed_network()
    losses = model.train_on_batch(X[:32], y[:32], epochs=100)  # the seed's line, verbatim
    assert len(losses) == 100 and all(isinstance(v, float) for v in losses)
    assert losses[0] > 1.0  # it started from chance level (ln 10 ~ 2.3)
    assert losses[-1] < 0.1, losses[-5:]  # training mode, Dropout on
    model.eval()
    assert model.compute_loss(model.forward(X[:32]), y[:32]) < 0.05
    model.train_on_batch(X[:32], y[:32])  # trains even in eval mode, and leaves the mode alone
    assert model.training is False


def test_repeated_calls_continue_one_optimizer_and_sgd_matches_update():
    X, y = data("synthetic")
    model = seed_network()
    first = model.train_on_batch(X[:32], y[:32], epochs=3)
    opt = model._batch_optimizer
    second = model.train_on_batch(X[:32], y[:32], epochs=2)
    assert model._batch_optimizer is opt and opt.step_count == 5
    assert second[0] < first[0]

    # optimizer="sgd" is the seed's loop: forward, compute_loss, backward, update(lr)
    a, b = seed_network(3), seed_network(3)
    losses = a.train_on_batch(X[:32], y[:32], epochs=4, lr=0.05, optimizer="sgd")
    expected = []
    for _ in range(4):
        expected.append(b.compute_loss(b.forward(X[:32]), y[:32]))
        b.backward()
        b.update(0.05)
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7, err_msg=name)


def test_model_loss_is_used_and_bad_arguments_are_refused():
    X, y = data("synthetic")
    model = Sequential([Linear(784, 10)], loss=nn.SoftmaxCrossEntropy())
    loss_module = model.loss
    model.train_on_batch(X[:8], y[:8])
    assert model.loss is loss_module and loss_module.probs is not None
    with pytest.raises(ValueError, match="optimizer"):
        model.train_on_batch(X[:8], y[:8], optimizer="lbfgs")
    with pytest.raises(ValueError, match="epochs"):
        model.train_on_batch(X[:8], y[:8], epochs=0)
    with pytest.raises(ValueError, match="x"):
        model.train_on_batch(X[:8, :700], y[:8])
