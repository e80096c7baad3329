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
same mask as ``kernels.dropout`` for the same (seed, step) (flat index i * H + j).
Gradients are overwritten.
"""

import numpy as np
from numba import prange

from .._config import kernel, typed
from .activations import RELU, act_grad_row, act_row
from .dropout import dropout_key, dropout_row
from .linear import COL_BLOCK


@kernel
def bias_act_dropout_forward(y, z, mask, b, act, alpha, seed, step, threshold, scale):
    """In place on y (holding x @ W): z = y + b; y = act(z), then dropout
    with the mask of (seed, step)."""
    n, h = y.shape
    key_lo, key_hi = dropout_key(seed, step)
    a = typed(y, alpha)
    save_z = z.size > 0
    drop = mask.size > 0
    for i in prange(n):
        row = y[i]
        for j in range(h):
            row[j] += b[j]
        if save_z:
            z[i, :] = row
        act_row(row, row, act, a)
        if drop:
            dropout_row(row, mask[i], row, i * h, key_lo, key_hi, threshold, scale)


@kernel
def bias_act_dropout_backward(dz, db, dy, y, z, mask, act, alpha, scale):
    """dz = dy * dropout' * act'(z); db = dz.sum(0). For ReLU, act' comes
    from y > 0 (z is unused; y > 0 also implies the element was kept)."""
    n, h = dy.shape
    a = typed(dy, alpha)
    s = typed(dy, scale)
    zero = typed(dy, 0.0)
    drop = mask.size > 0
    for i in prange(n):
        if act == RELU:
            for j in range(h):
                dz[i, j] = dy[i, j] * s if y[i, j] > zero else zero
        else:
            act_grad_row(dz[i], dy[i], z[i], act, a)
            if drop:
                for j in range(h):
                    dz[i, j] = dz[i, j] * s if mask[i, j] else zero
    nblocks = (h + COL_BLOCK - 1) // COL_BLOCK
    for blk in prange(nblocks):
        j0 = blk * COL_BLOCK
        j1 = min(j0 + COL_BLOCK, h)
        acc = np.zeros(j1 - j0, dtype=np.float64)
        for i in range(n):
            for j in range(j0, j1):
                acc[j - j0] += dz[i, j]
        for j in range(j0, j1):
            db[j] = acc[j - j0]


def linear_act_forward(y, z, mask, x, W, b, act, alpha, seed, step, threshold, scale):
    """y = dropout(act(x @ W + b)); saves z (unless ReLU) and mask (if dropout)."""
    np.matmul(x, W, out=y)
    bias_act_dropout_forward(y, z, mask, b, act, alpha, seed, step, threshold, scale, work=y.size)


def linear_act_backward(dx, dW, db, dz, dy, x, W, y, z, mask, act, alpha, scale):
    """dz (scratch, (N, H)) = dy through dropout and act; db = dz.sum(0);
    dW = x.T @ dz; dx = dz @ W.T (skipped when dx is None)."""
    bias_act_dropout_backward(dz, db, dy, y, z, mask, act, alpha, scale, work=dy.size)
    np.matmul(x.T, dz, out=dW)
    if dx is not None:
        np.matmul(dz, W.T, out=dx)
