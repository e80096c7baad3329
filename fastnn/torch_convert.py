"""Conversion between a fastnn ``Sequential`` and a ``torch.nn.Sequential``.

``to_torch(model)`` and ``from_torch(module)`` map layer for layer:

=====================  ==========================================
fastnn                 PyTorch
=====================  ==========================================
Linear                 Linear (weight transposed: fastnn's ``W`` is
                       ``(in, out)``, PyTorch's ``weight`` ``(out, in)``)
ReLU, Sigmoid, Tanh,   the same names
SiLU
LeakyReLU(alpha)       LeakyReLU(negative_slope=alpha)
GELU                   GELU(approximate="tanh") (fastnn's GELU is the
                       tanh approximation; the exact erf GELU is refused)
BatchNorm(dim)         BatchNorm1d(dim), running statistics copied
LayerNorm(dim)         LayerNorm(dim)
Dropout(p)             Dropout(p)
=====================  ==========================================

eps, momentum, dtype (float32 or float64) and train/eval mode carry over;
every array is copied, so the two models share no memory, after its shape
and dtype are checked against the layer's (a mismatch is refused, not
broadcast or cast). Anything else (a
Conv1d, a nested container, a custom module) is refused with an error naming
the layer. torch is imported only when a function is called.

Running variance: both libraries update BatchNorm's running statistics as
``running = (1 - momentum) * running + momentum * batch``, but for the
variance fastnn uses the batch's *biased* variance (divided by N, the one it
normalises with, as the seed does) and PyTorch its *unbiased* one (divided
by N - 1). The copied statistics are used as they are, so converted models
agree exactly in eval mode and in a training step's outputs and gradients;
after further training-mode batches, the running variances of the two drift
apart by a factor of about N / (N - 1) of each batch's contribution.
"""

from __future__ import annotations

import numpy as np

from . import nn
from .onnx import _check_params

__all__ = ["to_torch", "from_torch"]

_SIMPLE = ("ReLU", "Sigmoid", "Tanh", "SiLU")


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("fastnn.to_torch/from_torch need PyTorch: pip install 'fastnn[torch]'") from None
    return torch


def _tensor(torch, a):
    return torch.from_numpy(np.array(a, copy=True))


def to_torch(model):
    """A ``torch.nn.Sequential`` equal to the fastnn ``Sequential`` ``model``
    (see the module docstring for the mapping)."""
    torch = _torch()
    tnn = torch.nn
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"to_torch needs a fastnn Sequential, got {type(model).__name__}")
    out = []
    for i, layer in enumerate(model.layers):
        kind = type(layer)
        _check_params(f"to_torch: layer {i} ({layer!r})", layer)  # copy_ would broadcast or cast
        if kind is nn.Linear:
            dt = getattr(torch, layer.W.dtype.name)
            t = tnn.Linear(layer.in_features, layer.out_features, bias=layer.b is not None, dtype=dt)
            with torch.no_grad():
                t.weight.copy_(_tensor(torch, np.asarray(layer.W).T))
                if layer.b is not None:
                    t.bias.copy_(_tensor(torch, layer.b))
        elif kind in (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.SiLU):
            t = getattr(tnn, kind.__name__)()
        elif kind is nn.LeakyReLU:
            t = tnn.LeakyReLU(negative_slope=layer.alpha)
        elif kind is nn.GELU:
            t = tnn.GELU(approximate="tanh")
        elif kind is nn.BatchNorm:
            dt = getattr(torch, layer.gamma.dtype.name)
            t = tnn.BatchNorm1d(layer.dim, eps=layer.eps, momentum=layer.momentum, dtype=dt)
            with torch.no_grad():
                t.weight.copy_(_tensor(torch, layer.gamma))
                t.bias.copy_(_tensor(torch, layer.beta))
                t.running_mean.copy_(_tensor(torch, layer.running_mean))
                t.running_var.copy_(_tensor(torch, layer.running_var))
        elif kind is nn.LayerNorm:
            dt = getattr(torch, layer.gamma.dtype.name)
            t = tnn.LayerNorm(layer.dim, eps=layer.eps, dtype=dt)
            with torch.no_grad():
                t.weight.copy_(_tensor(torch, layer.gamma))
                t.bias.copy_(_tensor(torch, layer.beta))
        elif kind is nn.Dropout:
            t = tnn.Dropout(layer.p)
        else:
            raise TypeError(f"to_torch: layer {i} ({layer!r}, {kind.__name__}) has no PyTorch "
                            f"counterpart here; supported: Linear, ReLU, LeakyReLU, Sigmoid, Tanh, "
                            f"GELU, SiLU, BatchNorm, LayerNorm, Dropout")
        out.append(t)
    seq = tnn.Sequential(*out)
    seq.train(model.training)
    return seq


def _dtype(torch, where, tensor):
    if tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"from_torch: {where} has dtype {tensor.dtype}; only float32 and float64 are supported")
    return np.float32 if tensor.dtype == torch.float32 else np.float64


def _numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


def _copy(torch, where, name, tensor, dst):
    """``tensor`` into ``dst`` (a fastnn array), refusing a shape or dtype
    that differs: assigning into ``dst[...]`` would broadcast or cast it."""
    got = tuple(tensor.shape)
    want = dst.shape[::-1] if dst.ndim == 2 else dst.shape  # Linear's W is (in, out), weight (out, in)
    if got != want:
        raise ValueError(f"from_torch: {where}: {name} has shape {got}, expected {want}")
    if _dtype(torch, f"{where}: {name}", tensor) != dst.dtype:
        raise TypeError(f"from_torch: {where}: {name} has dtype {tensor.dtype}, expected "
                        f"torch.{dst.dtype.name} like the layer's other tensors")
    a = _numpy(tensor)
    dst[...] = a.T if dst.ndim == 2 else a


def _module_dtype(torch, where, module):
    """The one float dtype of ``module``'s tensors (torch's default when it
    has none), for a layer that has no tensor of its own."""
    dtypes = {t.dtype for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()}
    if len(dtypes) > 1:
        raise TypeError(f"from_torch: {where} has no tensor to take a dtype from, and the module mixes "
                        f"dtypes {sorted(str(d) for d in dtypes)}; convert it with .float() or .double() first")
    return dtypes.pop() if dtypes else torch.get_default_dtype()


def from_torch(module, backend=None, fuse=True):
    """A fastnn ``Sequential`` equal to the ``torch.nn.Sequential`` ``module``
    (see the module docstring for the mapping); ``backend`` and ``fuse`` are
    passed to ``Sequential``."""
    torch = _torch()
    tnn = torch.nn
    if not isinstance(module, tnn.Sequential):
        raise TypeError(f"from_torch needs a torch.nn.Sequential, got {type(module).__name__}")
    layers = []
    for name, t in module.named_children():
        where = f"layer {name} ({t})"
        kind = type(t)
        if kind is tnn.Linear:
            dt = _dtype(torch, where, t.weight)
            layer = nn.Linear(t.in_features, t.out_features, bias=t.bias is not None, dtype=dt)
            _copy(torch, where, "weight", t.weight, layer.W)
            if t.bias is not None:
                _copy(torch, where, "bias", t.bias, layer.b)
        elif kind in (tnn.ReLU, tnn.Sigmoid, tnn.Tanh, tnn.SiLU):
            layer = getattr(nn, kind.__name__)()
        elif kind is tnn.LeakyReLU:
            layer = nn.LeakyReLU(alpha=t.negative_slope)
        elif kind is tnn.GELU:
            if t.approximate != "tanh":
                raise TypeError(f"from_torch: {where}: fastnn's GELU is the tanh approximation; "
                                f"use torch.nn.GELU(approximate='tanh')")
            layer = nn.GELU()
        elif kind is tnn.BatchNorm1d:
            if not (t.affine and t.track_running_stats) or t.momentum is None:
                raise TypeError(f"from_torch: {where}: only affine BatchNorm1d with running statistics "
                                f"and a numeric momentum is supported")
            dt = _dtype(torch, where, t.weight)
            layer = nn.BatchNorm(t.num_features, eps=t.eps, momentum=t.momentum, dtype=dt)
            _copy(torch, where, "weight", t.weight, layer.gamma)
            _copy(torch, where, "bias", t.bias, layer.beta)
            _copy(torch, where, "running_mean", t.running_mean, layer.running_mean)
            _copy(torch, where, "running_var", t.running_var, layer.running_var)
        elif kind is tnn.LayerNorm:
            if len(t.normalized_shape) != 1:
                raise TypeError(f"from_torch: {where}: only LayerNorm over the last axis "
                                f"(one normalized dimension) is supported")
            dim = t.normalized_shape[0]
            # without affine the layer has no tensor: take the module's dtype, or it could not run
            src = t.weight if t.weight is not None else torch.empty(0, dtype=_module_dtype(torch, where, module))
            layer = nn.LayerNorm(dim, eps=t.eps, dtype=_dtype(torch, where, src))
            if t.weight is not None:
                _copy(torch, where, "weight", t.weight, layer.gamma)
            if getattr(t, "bias", None) is not None:
                _copy(torch, where, "bias", t.bias, layer.beta)
        elif kind is tnn.Dropout:
            layer = nn.Dropout(t.p)
        else:
            raise TypeError(f"from_torch: {where} is not supported; supported: Linear, ReLU, LeakyReLU, "
                            f"Sigmoid, Tanh, GELU(approximate='tanh'), SiLU, BatchNorm1d, LayerNorm, Dropout")
        layers.append(layer)
    model = nn.Sequential(layers, backend=backend, fuse=fuse)
    model.train(module.training)
    return model
