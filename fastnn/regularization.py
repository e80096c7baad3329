"""L2 regularisation and gradient clipping.

L2 in the loss vs. decoupled weight decay
-----------------------------------------
The seed adds ``l2_loss(params, lambda_)`` to the loss and
``l2_grad(param, lambda_) = lambda_ * param`` to each gradient. With plain
SGD that is the same as "weight decay": ``p -= lr * (g + lambda_ * p)``;
``optim.SGD(weight_decay=lambda_)`` and ``optim.Adam(weight_decay=lambda_)``
do exactly this (coupled L2, as PyTorch). With Adam the L2 term then passes
through the adaptive scaling, so weights with large gradients are decayed
less. ``optim.AdamW(weight_decay=wd)`` instead shrinks the weights directly,
``p *= 1 - lr * wd``, apart from the gradient (Loshchilov & Hutter,
"Decoupled Weight Decay Regularization"); its ``wd`` is not comparable to
an L2 ``lambda_``. Note that these helpers (and the optimizers' decay)
apply to every parameter they are given, biases and norm scales included:
pass a filtered list to regularise only the weights.

Clipping
--------
``clip_grad_value`` is the seed's ``np.clip(grad, -1, 1)``, in place, per
element. ``clip_grad_norm`` rescales all gradients together so that their
global norm is at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_``):
it keeps the direction of the update. Call either between ``backward`` and
``optimizer.step()``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _validate as V

__all__ = ["l2_loss", "l2_grad", "add_l2_grad", "clip_grad_value", "clip_grad_norm"]


def _param_list(params, name="params"):
    if isinstance(params, np.ndarray):
        return [params]
    try:
        out = list(params)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of arrays (e.g. model.parameters()), "
                        f"got {type(params).__name__}") from None
    for i, p in enumerate(out):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"{name}[{i}] must be an array (a Parameter), got {type(p).__name__}")
    return out


def _check_grad(i, p, g):
    """A gradient these helpers can change in place: as the optimizers check it
    (an integer one would be truncated, a broadcast one filled wrongly)."""
    if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(f"params[{i}].grad must be an array of the parameter's shape {p.shape} "
                         f"and dtype {p.dtype}, got "
                         + (type(g).__name__ if not isinstance(g, np.ndarray)
                            else f"shape {g.shape}, dtype {g.dtype}"))
    if g.dtype.kind != "f":
        raise TypeError(f"params[{i}].grad must be a float array, got dtype {g.dtype}")
    if not g.flags.writeable:
        raise ValueError(f"params[{i}].grad is read-only; it is changed in place")
    return g


def _grads(params):
    out = []
    for i, p in enumerate(_param_list(params)):
        g = getattr(p, "grad", None)
        if g is None:
            continue  # no gradient: nothing to clip (as PyTorch)
        out.append(_check_grad(i, p, g))
    return out


def l2_loss(params, lambda_) -> float:
    """``lambda_ / 2 * sum(sum(p**2) for p in params)``: add it to the loss."""
    lam = V.real("lambda_", lambda_, lo=0)
    total = 0.0
    for p in _param_list(params):
        f = np.asarray(p, dtype=np.float64).reshape(-1)
        total += float(np.dot(f, f))
    return lam * total / 2


def l2_grad(param, lambda_) -> np.ndarray:
    """``lambda_ * param`` (a new plain array): add it to ``param``'s gradient."""
    lam = V.real("lambda_", lambda_, lo=0)
    if not isinstance(param, np.ndarray):
        raise TypeError(f"param must be an array, got {type(param).__name__}")
    a = param.view(np.ndarray)
    return a * (a.dtype.type(lam) if a.dtype.kind == "f" else lam)


def add_l2_grad(params, lambda_) -> None:
    """``p.grad += lambda_ * p`` for each parameter, in place (the gradient of
    ``l2_loss``)."""
    lam = V.real("lambda_", lambda_, lo=0)
    if lam == 0:
        return
    params = _param_list(params)
    grads = []
    for i, p in enumerate(params):  # all checked before any is changed
        g = getattr(p, "grad", None)
        if g is None:
            raise ValueError(f"params[{i}] has no .grad")
        grads.append(_check_grad(i, p, g))
    for p, g in zip(params, grads):
        a = p.view(np.ndarray)
        g += a.dtype.type(lam) * a


def clip_grad_value(params, clip) -> None:
    """Clip every gradient entry to ``[-clip, clip]`` in place (the seed's
    ``np.clip(grad, -1, 1)`` with ``clip=1``). NaN stays NaN."""
    c = V.real("clip", clip, lo=0, lo_open=True)
    for g in _grads(params):
        np.clip(g, -c, c, out=g)


def clip_grad_norm(params, max_norm, norm_type=2.0, error_if_nonfinite=False) -> float:
    """Scale all gradients in place so that their global norm is at most
    ``max_norm``; return the norm before clipping (a float).

    The global norm is the ``norm_type``-norm (2 or ``inf``) of all gradient
    entries together, computed in float64. As ``torch.nn.utils.clip_grad_norm_``:
    the scale is ``min(1, max_norm / (norm + 1e-6))``; a non-finite norm
    raises ``FloatingPointError`` if ``error_if_nonfinite``, otherwise the
    gradients are scaled by it (and become NaN), which a non-finite check
    downstream will catch.
    """
    max_norm = V.real("max_norm", max_norm, lo=0)
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be 2 or inf, got {norm_type!r}")
    norm_type = float(norm_type)
    if norm_type not in (2.0, math.inf):
        raise ValueError(f"norm_type must be 2 or inf, got {norm_type:g}")
    grads = _grads(params)
    if not grads:
        return 0.0
    if norm_type == math.inf:
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        sq = 0.0
        for g in grads:
            f = g.reshape(-1)
            if f.dtype != np.float64:
                f = f.astype(np.float64)
            sq += float(np.dot(f, f))
        total = math.sqrt(sq)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise FloatingPointError(
                f"the total norm of the gradients is {total} (non-finite), so they cannot be "
                "clipped; set error_if_nonfinite=False to scale them anyway")
        coef = max_norm / total if total == math.inf else math.nan
    else:
        coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total
