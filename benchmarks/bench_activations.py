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
