"""Linear: numba vs NumPy, forward and backward.

Both sides do the matrix products in BLAS (through NumPy); the numba side
adds the bias and sums the bias gradient in kernels, the reference with
NumPy expressions. The shapes are (N, D, H): batch, in, out features.
"""

import numpy as np

from fastnn.kernels import linear as K
from fastnn.reference import linear as R

SHAPES = {"small": (64, 784, 256), "medium": (1024, 1024, 1024), "large": (4096, 1024, 1024)}


def test_linear_forward(compare_and_time, randn, case):
    n, d, h = case.shape
    x = randn(n, d)
    W = randn(d, h, scale=1 / np.sqrt(d))
    b = randn(h)
    y = np.empty((n, h), case.dtype)
    compare_and_time("linear_forward", K.linear_forward, R.linear_forward, {"y": y}, (x, W, b),
                     flops=2 * n * d * h)


def test_linear_backward(compare_and_time, randn, case):
    n, d, h = case.shape
    x = randn(n, d)
    W = randn(d, h, scale=1 / np.sqrt(d))
    dy = randn(n, h)
    outputs = {
        "dx": np.empty((n, d), case.dtype),
        "dW": np.empty((d, h), case.dtype),
        "db": np.empty(h, case.dtype),
    }
    # dW = x.T @ dy and dx = dy @ W.T: two GEMMs.
    compare_and_time("linear_backward", K.linear_backward, R.linear_backward, outputs, (dy, x, W),
                     flops=2 * 2 * n * d * h)
