"""Linear + activation + dropout, fused: numba vs NumPy, forward and backward.

The MLP block ``dropout(relu(x @ W + b))`` (p = 0.2) and the GELU block
without dropout. Both sides do the matrix products in BLAS; the numba side
does bias, activation, dropout (and their backward with the bias gradient)
in one kernel each. Shapes are (N, D, H): batch, in, out features.
"""

import numpy as np
import pytest

from fastnn.kernels import dropout as KD
from fastnn.kernels import linear_act as K
from fastnn.kernels.activations import GELU, RELU
from fastnn.reference import linear_act as R

SHAPES = {"small": (64, 784, 256), "medium": (1024, 1024, 1024), "large": (4096, 1024, 1024)}
P = 0.2
BLOCKS = {"relu-dropout": (RELU, P), "gelu": (GELU, 0.0)}


def _hyper(p):
    return (np.uint64(1234), np.uint64(7), KD.dropout_threshold(p), 1.0 / (1.0 - p))


def _arrays(randn, case, act, p):
    n, d, h = case.shape
    x = randn(n, d)
    W = randn(d, h, scale=1 / np.sqrt(d))
    b = randn(h, scale=0.1)
    z = np.empty((0, 0) if act == RELU else (n, h), case.dtype)
    mask = np.empty((n, h) if p > 0 else (0, 0), np.uint8)
    return x, W, b, z, mask


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_linear_act_forward(compare_and_time, randn, case, block):
    act, p = BLOCKS[block]
    n, d, h = case.shape
    x, W, b, z, mask = _arrays(randn, case, act, p)
    outputs = {"y": np.empty((n, h), case.dtype), "z": z, "mask": mask}
    compare_and_time(f"linear_act_forward[{block}]", K.linear_act_forward, R.linear_act_forward,
                     outputs, (x, W, b, act, 0.01, *_hyper(p)), flops=2 * n * d * h)


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_linear_act_backward(compare_and_time, randn, case, block):
    act, p = BLOCKS[block]
    n, d, h = case.shape
    x, W, b, z, mask = _arrays(randn, case, act, p)
    y = np.empty((n, h), case.dtype)
    R.linear_act_forward(y, z, mask, x, W, b, act, 0.01, *_hyper(p))
    dy = randn(n, h)
    outputs = {
        "dx": np.empty((n, d), case.dtype),
        "dW": np.empty((d, h), case.dtype),
        "db": np.empty(h, case.dtype),
        "dz": np.empty((n, h), case.dtype),
    }
    compare_and_time(f"linear_act_backward[{block}]", K.linear_act_backward, R.linear_act_backward,
                     outputs, (dy, x, W, y, z, mask, act, 0.01, _hyper(p)[-1]),
                     flops=2 * 2 * n * d * h)
