"""Linear + activation + dropout, fused: y = dropout(act(x @ W + b)).

The hot block of an MLP in two passes instead of six: the matrix product
goes to BLAS, then one kernel adds the bias, applies the activation and
the dropout mask row by row while the row is in cache; the backward's one
kernel undoes dropout and the activation and sums the bias gradient.

Shapes: ``N`` batch, ``D`` in features, ``H`` out features.
``x: (N, D)``, ``W: (D, H)``, ``b: (H,)``, ``y: (N, H)``.
Saved for the backward: ``z: (N, H)``, the pre-activation x @ W + b
(not needed for ReLU: pass an empty array, the output carries its sign),
and ``mask: (N, H) uint8`` (1 = kept; empty when there is no dropout).
``act`` is a code from ``kernels.activations.CODES``; dropout draws the
same mask as ``kernels.dropout`` for the same (seed, step) (flat index i * H + j;
``(row0 + i) * H + j`` when the rows are rows row0.. of a larger batch).
Gradients are overwritten. GELU and SiLU run with flush-to-zero, as their
``kernels.activations`` kernels.
"""

import numpy as np
from numba import prange

from .._config import PARALLEL_BUILD, kernel, specialise, typed
from .activations import (GELU, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SILU, TANH, flush_rows,
                          gelu_fn, gelu_grad_fn, identity_fn, identity_grad, leaky_relu_fn,
                          leaky_relu_grad, relu_fn, sigmoid_fn, sigmoid_grad, silu_fn, silu_grad,
                          tanh_fn, tanh_grad)
from ._fpenv import ftz_begin, ftz_end
from .dropout import dropout_key, kept
from .linear import column_sums


def _forward_row(row, zrow, mrow, b, alpha, base, key_lo, key_hi, t, s, save_z, drop):
    """row = dropout(act(row + b)) in one pass (two passes ran 5x slower);
    zrow = row + b when save_z; mrow = the kept flags when drop.
    ``act`` is bound by ``specialise``."""
    for j in range(row.shape[0]):
        v = row[j] + b[j]
        if save_z:
            zrow[j] = v
        a = act(v, alpha)  # noqa: F821
        if drop:
            keep = kept(np.uint32(base + np.uint32(j)), key_lo, key_hi, t)
            mrow[j] = keep
            a = a * (typed(row, keep) * s)  # a product, not a select: see dropout_by_key
        row[j] = a


def _backward_row(dzrow, dyrow, zrow, mrow, alpha, s, drop):
    """dzrow = dyrow * act'(zrow) [* mask * s] in one pass; ``act_grad`` is
    bound by ``specialise``."""
    for j in range(dzrow.shape[0]):
        d = dyrow[j] * act_grad(zrow[j], alpha)  # noqa: F821
        if drop:
            d = d * (typed(dzrow, mrow[j]) * s)
        dzrow[j] = d


_FWD_RELU = specialise(_forward_row, act=relu_fn)
_FWD_LEAKY_RELU = specialise(_forward_row, act=leaky_relu_fn)
_FWD_SIGMOID = specialise(_forward_row, act=sigmoid_fn)
_FWD_TANH = specialise(_forward_row, act=tanh_fn)
_FWD_GELU = specialise(_forward_row, act=gelu_fn)
_FWD_SILU = specialise(_forward_row, act=silu_fn)
_FWD_IDENTITY = specialise(_forward_row, act=identity_fn)
_BWD_LEAKY_RELU = specialise(_backward_row, act_grad=leaky_relu_grad)
_BWD_SIGMOID = specialise(_backward_row, act_grad=sigmoid_grad)
_BWD_TANH = specialise(_backward_row, act_grad=tanh_grad)
_BWD_GELU = specialise(_backward_row, act_grad=gelu_grad_fn)
_BWD_SILU = specialise(_backward_row, act_grad=silu_grad)
_BWD_IDENTITY = specialise(_backward_row, act_grad=identity_grad)


@kernel
def bias_act_dropout_forward(y, z, mask, b, act, alpha, seed, step, threshold, scale, row0=0):
    """In place on y (holding x @ W): z = y + b; y = act(z), then dropout
    with the mask of (seed, step)."""
    n, h = y.shape
    key_lo, key_hi = dropout_key(seed, step)
    a = typed(y, alpha)
    s = typed(y, scale)
    t = np.uint32(threshold)
    save_z = z.size > 0
    drop = mask.size > 0
    no_mask = np.empty(0, np.uint8)
    if act != GELU and act != SILU:
        for i in prange(n):
            row = y[i]
            zrow = z[i] if save_z else row  # not written unless save_z
            mrow = mask[i] if drop else no_mask
            base = np.uint32(((row0 + i) * h) & 0xFFFFFFFF)
            if act == RELU:
                _FWD_RELU(row, zrow, mrow, b, a, base, key_lo, key_hi, t, s, save_z, drop)
            elif act == LEAKY_RELU:
                _FWD_LEAKY_RELU(row, zrow, mrow, b, a, base, key_lo, key_hi, t, s, save_z, drop)
            elif act == SIGMOID:
                _FWD_SIGMOID(row, zrow, mrow, b, a, base, key_lo, key_hi, t, s, save_z, drop)
            elif act == TANH:
                _FWD_TANH(row, zrow, mrow, b, a, base, key_lo, key_hi, t, s, save_z, drop)
            else:
                _FWD_IDENTITY(row, zrow, mrow, b, a, base, key_lo, key_hi, t, s, save_z, drop)
    else:
        # flush-to-zero, as their kernels in kernels.activations: set once
        # per block of rows (once per row cost (4096, 16) 20%)
        rows = flush_rows(n, h, PARALLEL_BUILD)
        for r in prange((n + rows - 1) // rows):
            mode = ftz_begin()
            for i in range(r * rows, min(n, (r + 1) * rows)):
                row = y[i]
                zrow = z[i] if save_z else row
                mrow = mask[i] if drop else no_mask
                base = np.uint32(((row0 + i) * h) & 0xFFFFFFFF)
                if act == GELU:
                    _FWD_GELU(row, zrow, mrow, b, a, base, key_lo, key_hi, t, s, save_z, drop)
                else:
                    _FWD_SILU(row, zrow, mrow, b, a, base, key_lo, key_hi, t, s, save_z, drop)
            ftz_end(mode)


@kernel
def bias_act_dropout_backward(dz, db, dy, y, z, mask, act, alpha, scale):
    """dz = dy * dropout' * act'(z); db = dz.sum(0). For ReLU, act' comes
    from y > 0 (z is unused; y > 0 also implies the element was kept)."""
    n, h = dy.shape
    a = typed(dy, alpha)
    s = typed(dy, scale)
    zero = typed(dy, 0.0)
    drop = mask.size > 0
    no_mask = np.empty(0, np.uint8)
    if act != GELU and act != SILU:
        for i in prange(n):
            if act == RELU:
                for j in range(h):
                    dz[i, j] = dy[i, j] * s if y[i, j] > zero else zero
                continue
            mrow = mask[i] if drop else no_mask
            if act == LEAKY_RELU:
                _BWD_LEAKY_RELU(dz[i], dy[i], z[i], mrow, a, s, drop)
            elif act == SIGMOID:
                _BWD_SIGMOID(dz[i], dy[i], z[i], mrow, a, s, drop)
            elif act == TANH:
                _BWD_TANH(dz[i], dy[i], z[i], mrow, a, s, drop)
            else:
                _BWD_IDENTITY(dz[i], dy[i], z[i], mrow, a, s, drop)
    else:
        rows = flush_rows(n, h, PARALLEL_BUILD)  # flush-to-zero, as in the forward
        for r in prange((n + rows - 1) // rows):
            mode = ftz_begin()
            for i in range(r * rows, min(n, (r + 1) * rows)):
                mrow = mask[i] if drop else no_mask
                if act == GELU:
                    _BWD_GELU(dz[i], dy[i], z[i], mrow, a, s, drop)
                else:
                    _BWD_SILU(dz[i], dy[i], z[i], mrow, a, s, drop)
            ftz_end(mode)
    column_sums(db, dz)


def linear_act_forward(y, z, mask, x, W, b, act, alpha, seed, step, threshold, scale, row0=0):
    """y = dropout(act(x @ W + b)); saves z (unless ReLU) and mask (if dropout)."""
    np.matmul(x, W, out=y)
    bias_act_dropout_forward(y, z, mask, b, act, alpha, seed, step, threshold, scale, row0, work=y.size)


def linear_act_backward(dx, dW, db, dz, dy, x, W, y, z, mask, act, alpha, scale):
    """dz (scratch, (N, H)) = dy through dropout and act; db = dz.sum(0);
    dW = x.T @ dz; dx = dz @ W.T (skipped when dx is None)."""
    bias_act_dropout_backward(dz, db, dy, y, z, mask, act, alpha, scale, work=dy.size)
    np.matmul(x.T, dz, out=dW)
    if dx is not None:
        np.matmul(dz, W.T, out=dx)
