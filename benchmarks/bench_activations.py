"""ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU: numba vs NumPy, forward and backward.

The kernels take flat 1-D arrays (as ``fastnn.functional`` passes them);
the case's (N, D) is flattened.
"""

import pytest

from fastnn.kernels import activations as K
from fastnn.reference import activations as R

NAMES = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu")
SAVES_OUTPUT = {"sigmoid", "tanh"}  # backward takes y, not x
ALPHA = 0.01


def _extra(name):
    return (ALPHA,) if name == "leaky_relu" else ()


@pytest.mark.parametrize("name", NAMES)
def test_activation_forward(compare_and_time, randn, case, name):
    x = randn(*case.shape).reshape(-1)
    y = x.copy()
    op = f"{name}_forward"
    compare_and_time(op, getattr(K, op), getattr(R, op), {"y": y}, (x, *_extra(name)))


@pytest.mark.parametrize("name", NAMES)
def test_activation_backward(compare_and_time, randn, case, name):
    x = randn(*case.shape).reshape(-1)
    dy = randn(*case.shape).reshape(-1)
    saved = x
    if name in SAVES_OUTPUT:
        saved = x.copy()
        getattr(R, f"{name}_forward")(saved, x, *_extra(name))
    dx = x.copy()
    op = f"{name}_backward"
    compare_and_time(op, getattr(K, op), getattr(R, op), {"dx": dx}, (dy, saved, *_extra(name)))


# ------------------------------------------------ real state: a saturated network


@pytest.fixture(scope="module")
def saturated_state():
    """(x, dy) at the first activation of the seed network with SiLU or GELU
    after one epoch of ``fit`` on Fashion-MNIST fed raw 0-255 pixels (a
    common slip): most units sit far in the negative tail, where the
    activation's tiny derivative times a small gradient falls into the
    subnormal range. Computed once per activation."""
    import numpy as np

    import fastnn
    from fastnn import nn
    from fastnn.data import load_mnist
    from fastnn.train import fit

    try:
        (X, y), _ = load_mnist(kind="fashion")
    except (OSError, ValueError) as exc:
        pytest.skip(f"Fashion-MNIST not installed ({exc})")
    X = X * np.float32(255)
    states = {}

    def get(name):
        if name not in states:
            act = {"silu": nn.SiLU, "gelu": nn.GELU}[name]
            fastnn.manual_seed(0)
            model = nn.Sequential([nn.Linear(784, 256), act(), nn.Linear(256, 128), act(), nn.Linear(128, 10)])
            loss_fn = nn.SoftmaxCrossEntropy()
            fit(model, loss_fn, fastnn.optim.Adam(model.parameters(), lr=1e-3), X, y, epochs=1,
                batch_size=64, seed=0, progress=False)
            inputs, a = [], X[:4096]
            for layer in model.layers:  # one by one, to keep each layer's input
                inputs.append(a)
                a = layer.forward(a, training=True)
            loss_fn.forward(a, y[:4096])
            g = loss_fn.backward()
            for layer in model.layers[:1:-1]:  # back to the first activation's output
                g = layer.backward(g)
            states[name] = (inputs[1].reshape(-1).copy(), g.reshape(-1).copy())
        return states[name]

    return get


@pytest.mark.parametrize("state", ["trained", "random"])
@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_activation_backward_saturated_state(benchmark, saturated_state, name, state):
    """SiLU's and GELU's backward kernels on the first layer's (4096, 256)
    state from that training, and on random arrays of the same size and
    gradient spread. Before the kernels flushed subnormals, SiLU's took 2.8x
    its random-data time on such state (docs/design.md)."""
    import numpy as np

    x, dy = saturated_state(name)
    tiny = np.finfo(np.float32).tiny
    if state == "random":
        rng = np.random.default_rng(0)
        x = rng.standard_normal(x.size, dtype=np.float32)
        dy = rng.standard_normal(x.size, dtype=np.float32) * np.float32(np.std(dy))
    kernel = getattr(K, f"{name}_backward")
    dx = np.empty_like(x)
    benchmark.group = f"{name}-backward-saturated-state-4096x256-float32"
    benchmark.extra_info.update(state=state, saturated=float(np.mean(x < -80)),
                                subnormal_gradients=float(np.mean((dy != 0) & (np.abs(dy) < tiny))))
    benchmark(kernel, dx, dy, x, work=x.size)
    ref = np.empty_like(x)
    getattr(R, f"{name}_backward")(ref, dy, x)
    np.testing.assert_allclose(dx, ref, rtol=2e-4, atol=2e-4 * float(np.max(np.abs(ref))) + 1000 * tiny)
