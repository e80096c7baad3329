"""The eval-mode fast path of ``Sequential.forward`` (serving small batches).

In eval mode a forward needs no caches: each fused Linear [+ activation]
[+ Dropout] block is one matrix product into a buffer reused across calls
and one in-place bias + activation kernel (the training kernel's, with no
saved pre-activation and no mask); Dropout is the identity. Other layers run
their own eval forward. The input check is a few attribute tests; anything
unusual (another dtype or type, a wrong shape, an empty batch, the numpy
backend, finite checks on) returns None and ``Sequential.forward`` takes its
ordinary path, which converts or explains.

A model run here saves no activations: ``Sequential.backward`` after an
eval-mode forward raises instead of using an older forward's state.
"""

from __future__ import annotations

import numpy as np

from . import _memory
from . import functional as F
from .kernels import linear_act as _K_la

_EMPTY2 = {np.dtype(t): np.empty((0, 0), t) for t in (np.float32, np.float64)}
_EMPTY2_U8 = np.empty((0, 0), np.uint8)
_ZERO_U64 = np.uint64(0)


def _linear_step(kind, linear, block=None):
    """(kind, linear, W, b, block), W and b as checked: the bias kernel reads b unchecked,
    and eval_forward replans when either is replaced."""
    linear._check_params()
    return (kind, linear, linear.W, linear.b, block)


def _steps(model, blocks):
    """Per block: ("block", linear, W, b, fused block), ("linear", linear, W, b, None) or ("module", m)."""
    from .nn import Dropout, Linear, _LinearActBlock  # nn imports this module

    steps = []
    for block in blocks:
        if isinstance(block, _LinearActBlock):
            steps.append(_linear_step("block", block.linear, block))
        elif type(block) is Linear:
            steps.append(_linear_step("linear", block))
        elif type(block) is Dropout:
            continue  # the identity in eval mode
        else:
            steps.append(("module", block))
    if len({s[1].W.dtype for s in steps if s[0] != "module"}) > 1:
        return []  # mixed dtypes: the ordinary path explains
    return steps


def eval_forward(model, x):
    """``model.forward(x)`` in eval mode, or None where the fast path does not apply."""
    if (F._finite_maybe and F._check_finite) or not F._numba(model._backend):
        return None
    blocks = model._plan()
    cache = model.__dict__.get("_eval_cache")
    if cache is None or cache[0] is not blocks:
        steps = _steps(model, blocks)
        if not steps or steps[0][0] == "module":
            return None
        from .nn import _FRESH_ARRAYS

        # a product's output goes into a buffer reused at the next call only when a later
        # step makes a fresh array (a module after it may return its input or a view)
        fresh = [s[0] != "module" or type(s[1]) in _FRESH_ARRAYS for s in steps]
        reuse = [any(fresh[k + 1:]) for k in range(len(steps))]
        cache = model._eval_cache = (blocks, steps, {}, reuse)
    _, steps, buffers, reuse = cache
    first = steps[0][1]
    dt = steps[0][2].dtype  # W as checked
    if not (type(x) is np.ndarray and x.dtype == dt and x.ndim == 2
            and x.shape[1] == first.in_features and x.shape[0] > 0):
        return None
    object.__setattr__(model, "_ran", None)  # nothing saved: a backward must not use an older forward's state
    n, x0 = x.shape[0], x
    for k, step in enumerate(steps):
        kind, layer = step[0], step[1]
        if kind == "module":
            x = layer.forward(x, training=False)
            continue
        W, b = layer.W, layer.b
        if W is not step[2] or b is not step[3]:  # a replaced parameter: check (and plan) again
            del model._eval_cache
            return eval_forward(model, x0)
        if x.shape[1] != layer.in_features:  # widths that do not chain: the layer path's error
            raise ValueError(f"x must have shape (N, {layer.in_features}) for {layer!r}, got {x.shape}")
        if not reuse[k]:
            y = _memory.empty((n, layer.out_features), dt)  # may leave the model: a fresh array
        else:
            y = buffers.get((k, n))
            if y is None or y.dtype != dt:
                y = buffers[(k, n)] = np.empty((n, layer.out_features), dt)
        np.matmul(x, W.view(np.ndarray), out=y)
        if kind == "block":
            block = step[4]
            _K_la.bias_act_dropout_forward(y, _EMPTY2[dt], _EMPTY2_U8, b.view(np.ndarray), block.code, block.alpha,
                                           _ZERO_U64, _ZERO_U64, 0, 1.0, work=y.size)
        elif b is not None:
            np.add(y, b, out=y)
        x = y
    return x
