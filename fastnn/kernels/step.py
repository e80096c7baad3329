"""A Sequential's training forward and backward, each in one compiled call.

The layer-by-layer path calls one kernel (or np.matmul) per op from
Python: about 18 calls a step for the seed's network, each paying
dispatch, argument checks and module bookkeeping. Here one call runs the
whole forward (every layer, the loss) and one the whole
backward (loss gradient, every layer), calling the same kernels in the
same order with the same arguments (their serial builds), and the matrix
products through NumPy's own BLAS (``_blas.gemm``): the results are the
layer path's to rounding (LLVM may vectorise a kernel's reductions
differently once it is compiled into this one; often the bits are equal).

Layers are "blocks" ``k = 0 .. L-1`` described by table rows, and every
per-block array sits in a tuple indexed by ``k`` (an unused slot holds an
empty array), so one compiled function serves any stack of the supported
blocks (one compile per block count and dtype, cached on disk):

``ops[k]`` (int64): ``[op, act code, has bias, dropout threshold (-1: no
dropout), dropout element offset, activation saves its output]``;
``fl[k]`` (float64): ``[alpha, dropout scale, eps, momentum]``;
``keys[k]`` (uint64): ``[dropout seed, dropout step]``.

``A[k]`` is block k's input, ``A[k + 1]`` its output (``A[0]`` the
batch, ``A[L]`` the logits); ``D[k]`` the gradient of the loss
with respect to ``A[k]``. Block k's parameters are ``W[k]`` (2-D) and
``P1[k]``, ``P2[k]`` (bias; or gamma, beta), their gradients ``GW``,
``G1``, ``G2``; saved for the backward: ``Z[k]`` (pre-activation of a
fused non-ReLU block), ``M[k]`` (dropout mask), ``S1..S3[k]`` (norm
statistics: mean, rstd, BatchNorm's var); ``R1``, ``R2``: BatchNorm's
running mean and variance; ``DZ[k]``: scratch.
"""

import numpy as np

from .._config import STEP_FLAGS, compiled, specialise
from ._blas import gemm
from .activations import (GELU, LEAKY_RELU, RELU, SIGMOID, SILU, TANH, gelu_backward,
                          gelu_forward, leaky_relu_backward, leaky_relu_forward, relu_backward,
                          relu_forward, sigmoid_backward, sigmoid_forward, silu_backward,
                          silu_forward, tanh_backward, tanh_forward)
from .batchnorm import batchnorm_backward, batchnorm_forward, blend_running
from .dropout import dropout_backward, dropout_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import bias_add, column_sum
from .linear_act import bias_act_dropout_backward, bias_act_dropout_forward
from .softmax_xent import softmax_xent_backward_labels, softmax_xent_forward_labels

LINEAR_ACT, LINEAR, ACTIVATION, DROPOUT, BATCHNORM, LAYERNORM = range(6)

_bad_forward = bias_act_dropout_forward.serial
_bad_backward = bias_act_dropout_backward.serial
_bias_add = bias_add.serial
_column_sum = column_sum.serial
_bn_forward = batchnorm_forward.serial
_bn_blend = blend_running.serial
_bn_backward = batchnorm_backward.serial
_ln_forward = layernorm_forward.serial
_ln_backward = layernorm_backward.serial
_drop_forward = dropout_forward.serial
_drop_backward = dropout_backward.serial
_xent_forward = softmax_xent_forward_labels.serial
_xent_backward = softmax_xent_backward_labels.serial
_relu_f, _relu_b = relu_forward.serial, relu_backward.serial
_leaky_f, _leaky_b = leaky_relu_forward.serial, leaky_relu_backward.serial
_sigmoid_f, _sigmoid_b = sigmoid_forward.serial, sigmoid_backward.serial
_tanh_f, _tanh_b = tanh_forward.serial, tanh_backward.serial
_gelu_f, _gelu_b = gelu_forward.serial, gelu_backward.serial
_silu_f, _silu_b = silu_forward.serial, silu_backward.serial


@compiled
def _activation_forward(code, y, x, alpha):
    if code == RELU:
        _relu_f(y, x)
    elif code == LEAKY_RELU:
        _leaky_f(y, x, alpha)
    elif code == SIGMOID:
        _sigmoid_f(y, x)
    elif code == TANH:
        _tanh_f(y, x)
    elif code == GELU:
        _gelu_f(y, x)
    elif code == SILU:
        _silu_f(y, x)


@compiled
def _activation_backward(code, dx, dy, saved, alpha):
    if code == RELU:
        _relu_b(dx, dy, saved)
    elif code == LEAKY_RELU:
        _leaky_b(dx, dy, saved, alpha)
    elif code == SIGMOID:
        _sigmoid_b(dx, dy, saved)
    elif code == TANH:
        _tanh_b(dx, dy, saved)
    elif code == GELU:
        _gelu_b(dx, dy, saved)
    elif code == SILU:
        _silu_b(dx, dy, saved)


@compiled
def _count_correct(logits, labels):
    """Rows whose largest logit (the first, on ties: np.argmax's choice) is at
    the label. Called on finite losses only, so no logit is NaN or +inf."""
    hits = 0
    for i in range(logits.shape[0]):
        best = 0
        for j in range(1, logits.shape[1]):
            if logits[i, j] > logits[i, best]:
                best = j
        if best == labels[i]:
            hits += 1
    return hits


def _forward_template(gemm_fn, wide, ops, fl, keys, labels, probs, losses, correct,
                      A, W, P1, P2, Z, M, S1, S2, S3, R1, R2):
    """Training forward of the batch in A[0] through every block; then, when
    ``probs`` has rows, softmax cross-entropy of A[L] against ``labels``
    (``losses`` per row) and, when ``correct`` has an element, the count of
    rows predicted right in ``correct[0]`` (the training accuracy that ``fit``
    reports, without three NumPy calls a step). Returns False when a loss is
    NaN or infinite (``correct`` is then left as it was).
    (The caller gathers the batch: ``np.take`` copied rows 2x faster than a
    loop here.) ``other_forward`` is bound by ``specialise`` at the end of
    this file."""
    for k in range(ops.shape[0]):
        op = ops[k, 0]
        x = A[k]
        out = A[k + 1]
        if op == LINEAR_ACT or op == LINEAR:
            gemm(gemm_fn, wide, out, x, W[k], False, False)
            if op == LINEAR_ACT:
                drop = ops[k, 3] >= 0
                _bad_forward(out, Z[k], M[k], P1[k], ops[k, 1], fl[k, 0],
                             keys[k, 0] if drop else np.uint64(0), keys[k, 1] if drop else np.uint64(0),
                             ops[k, 3] if drop else 0, fl[k, 1] if drop else 1.0,
                             ops[k, 4] if drop else 0)
            elif ops[k, 2]:
                _bias_add(out, P1[k])
        else:
            other_forward(op, ops[k], fl[k], keys[k], x, out, M[k], S1[k], S2[k], S3[k], P1[k], P2[k],  # noqa: F821
                          R1[k], R2[k])
    if probs.shape[0] == 0:
        return True
    _xent_forward(probs, losses, A[ops.shape[0]], labels)
    for i in range(losses.shape[0]):
        if not np.isfinite(losses[i]):
            return False
    if correct.shape[0] > 0:
        correct[0] = _count_correct(A[ops.shape[0]], labels)
    return True


def _backward_template(gemm_fn, wide, ops, fl, need_input_grad, labels, probs,
                       A, W, P1, GW, G1, G2, Z, M, S1, S2, D, DZ):
    """Training backward after ``sequential_forward``: when ``probs`` has
    rows, D[L] = the softmax cross-entropy gradient (else D[L] holds the
    caller's gradient); then every block in reverse, overwriting the
    parameter gradients; D[0] only when ``need_input_grad``.
    ``other_backward`` is bound by ``specialise``."""
    L = ops.shape[0]
    if probs.shape[0] > 0:
        _xent_backward(D[L], probs, labels)
    for k in range(L - 1, -1, -1):
        op = ops[k, 0]
        dy = D[k + 1]
        dx = D[k]
        want_dx = k > 0 or need_input_grad
        if op == LINEAR_ACT:
            drop = ops[k, 3] >= 0
            _bad_backward(DZ[k], G1[k], dy, A[k + 1], Z[k], M[k], ops[k, 1], fl[k, 0],
                          fl[k, 1] if drop else 1.0)
            gemm(gemm_fn, wide, GW[k], A[k], DZ[k], True, False)
            if want_dx:
                gemm(gemm_fn, wide, dx, DZ[k], W[k], False, True)
        elif op == LINEAR:
            gemm(gemm_fn, wide, GW[k], A[k], dy, True, False)
            if ops[k, 2]:
                _column_sum(G1[k], dy)
            if want_dx:
                gemm(gemm_fn, wide, dx, dy, W[k], False, True)
        else:
            other_backward(op, ops[k], fl[k], A[k], A[k + 1], dx, dy, M[k], S1[k], S2[k], P1[k],  # noqa: F821
                           G1[k], G2[k])


@compiled
def _other_forward(op, row, frow, key, x, out, mask, s1, s2, s3, p1, p2, r1, r2):
    """The forward of a block other than Linear: an activation, Dropout,
    BatchNorm (with its running statistics) or LayerNorm."""
    if op == ACTIVATION:
        _activation_forward(row[1], out.reshape(-1), x.reshape(-1), frow[0])
    elif op == DROPOUT:
        _drop_forward(out.reshape(-1), mask.reshape(-1), x.reshape(-1), key[0], key[1], row[3], frow[1],
                      row[4])
    elif op == BATCHNORM:
        _bn_forward(out, s1, s3, s2, x, p1, p2, frow[2])
        _bn_blend(r1, s1, frow[3])
        _bn_blend(r2, s3, frow[3])
    elif op == LAYERNORM:
        _ln_forward(out, s1, s2, x, p1, p2, frow[2])


@compiled
def _other_backward(op, row, frow, x, y, dx, dy, mask, s1, s2, p1, g1, g2):
    """The backward of a block other than Linear."""
    if op == ACTIVATION:
        saved = y if row[5] else x
        _activation_backward(row[1], dx.reshape(-1), dy.reshape(-1), saved.reshape(-1), frow[0])
    elif op == DROPOUT:
        _drop_backward(dx.reshape(-1), dy.reshape(-1), mask.reshape(-1), frow[1])
    elif op == BATCHNORM:
        _bn_backward(dx, g1, g2, dy, x, s1, s2, p1)
    elif op == LAYERNORM:
        _ln_backward(dx, g1, g2, dy, x, s1, s2, p1)


@compiled
def _no_other_forward(op, row, frow, key, x, out, mask, s1, s2, s3, p1, p2, r1, r2):
    """A stack of Linear blocks only: never called (saves compiling every other kernel)."""


@compiled
def _no_other_backward(op, row, frow, x, y, dx, dy, mask, s1, s2, p1, g1, g2):
    """See ``_no_other_forward``."""


# Any stack of the supported blocks; and one of Linear (+ activation + Dropout)
# blocks only, which compiles in a fraction of the time.
sequential_forward = specialise(_forward_template, STEP_FLAGS, other_forward=_other_forward)
sequential_backward = specialise(_backward_template, STEP_FLAGS, other_backward=_other_backward)
linear_stack_forward = specialise(_forward_template, STEP_FLAGS, other_forward=_no_other_forward)
linear_stack_backward = specialise(_backward_template, STEP_FLAGS, other_backward=_no_other_backward)
