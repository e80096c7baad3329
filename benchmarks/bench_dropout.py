"""Inverted dropout with counter-based masks: numba vs NumPy, forward and
backward. The kernels take flat 1-D arrays; the case's (N, D) is flattened."""

import numpy as np

from fastnn.kernels import dropout as K
from fastnn.reference import dropout as R

P = 0.5
SEED, STEP = 1234, 7


def _hyper():
    """The forward's arguments after x: seed, step, threshold, scale."""
    return (np.uint64(SEED), np.uint64(STEP), K.dropout_threshold(P), 1.0 / (1.0 - P))


def test_dropout_forward(compare_and_time, randn, case):
    x = randn(*case.shape).reshape(-1)
    outputs = {"y": np.empty_like(x), "mask": np.empty(x.size, np.uint8)}
    compare_and_time("dropout_forward", K.dropout_forward, R.dropout_forward, outputs,
                     (x, *_hyper()))


def test_dropout_backward(compare_and_time, randn, case):
    x = randn(*case.shape).reshape(-1)
    dy = randn(*case.shape).reshape(-1)
    hyper = _hyper()
    scale = hyper[-1]
    mask = np.empty(x.size, np.uint8)
    R.dropout_forward(np.empty_like(x), mask, x, *hyper)
    compare_and_time("dropout_backward", K.dropout_backward, R.dropout_backward,
                     {"dx": np.empty_like(dy)}, (dy, mask, scale))


def test_dropout_by_key(compare_and_time, randn, case):
    """The forward without a mask; the backward is the same call on dy."""
    x = randn(*case.shape).reshape(-1)
    compare_and_time("dropout_by_key", K.dropout_by_key, R.dropout_by_key, {"y": np.empty_like(x)},
                     (x, *_hyper()))


def test_kept_mask(compare_and_time, randn, case):
    """The mask alone (``Dropout.mask`` after a forward that stored none)."""
    n = int(np.prod(case.shape))
    seed, step, threshold, _ = _hyper()
    compare_and_time("kept_mask", K.kept_mask, R.kept_mask, {"mask": np.empty(n, np.uint8)},
                     (seed, step, threshold))
