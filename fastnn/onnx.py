"""ONNX export of an eval-mode ``Sequential``: ``fastnn.onnx.export(model, path)``.

The graph has one input ``"input"`` of shape ``(batch, features)`` and one
output ``"output"``, with a dynamic batch dimension, in the model's dtype
(float32 or float64), at opset 17. Layer by layer:

- Linear: ``Gemm(x, W, b)`` (``W`` is already ``(in, out)``);
- ReLU, Sigmoid, Tanh: the ops of those names; LeakyReLU: ``LeakyRelu(alpha)``;
- GELU (fastnn's tanh approximation): built from Mul, Add, Tanh as
  ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``;
- SiLU: ``x * Sigmoid(x)``;
- BatchNorm: ``BatchNormalization`` with the running statistics and the layer's eps;
- LayerNorm: ``LayerNormalization`` over the last axis with the layer's eps;
- Dropout: left out (identity at inference).

Anything else is refused with an error naming the layer. The ``onnx``
package is imported only when ``export`` is called (``pip install 'fastnn[onnx]'``).
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from . import _validate as V
from . import nn

__all__ = ["export", "OPSET"]

#: LayerNormalization entered the standard domain at opset 17.
OPSET = 17

_SUPPORTED = (nn.Linear, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU,
              nn.BatchNorm, nn.LayerNorm, nn.Dropout)


def _check(model):
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"fastnn.onnx.export needs a fastnn Sequential, got {type(model).__name__}")
    for i, layer in enumerate(model.layers):
        if type(layer) not in _SUPPORTED:
            raise TypeError(f"fastnn.onnx.export: layer {i} ({layer!r}, {type(layer).__name__}) cannot be "
                            f"exported; supported: " + ", ".join(t.__name__ for t in _SUPPORTED))


def _dtype(model) -> np.dtype:
    dtypes = {np.asarray(p).dtype for p in model.parameters()}
    if not dtypes:
        return np.dtype(np.float32)
    if len(dtypes) > 1:
        raise TypeError(f"fastnn.onnx.export: the model mixes dtypes {sorted(d.name for d in dtypes)}")
    return dtypes.pop()


def _width(layer):
    for attr in ("in_features", "dim"):
        if hasattr(layer, attr):
            return getattr(layer, attr)
    return None


def _check_params(where, layer):
    """The layer's arrays against its shape and dtype, as the layer path
    checks them: copied as they are, a wrong shape would be broadcast (by
    Gemm, LayerNormalization, torch's copy_) into a model that computes
    something else. ``where`` prefixes the error."""
    try:
        if type(layer) is nn.Linear:
            layer._check_params()
        elif type(layer) in (nn.BatchNorm, nn.LayerNorm):
            names = ["gamma", "beta"] + (["running_mean", "running_var"] if type(layer) is nn.BatchNorm else [])
            dt = None
            for name in names:
                a = getattr(layer, name)
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{name} of {layer!r} must be a numpy array, got {type(a).__name__}")
                if a.dtype not in V.FLOAT_DTYPES or dt is not None and a.dtype != dt:
                    want = "float32 or float64" if dt is None else f"{dt}, gamma's"
                    raise TypeError(f"{name} of {layer!r} has dtype {a.dtype}, expected {want} "
                                    f"(dtypes are never mixed silently)")
                if a.shape != (layer.dim,):
                    raise ValueError(f"{name} must have shape ({layer.dim},) for {layer!r}, got {a.shape}")
                dt = a.dtype
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _widths(model, input_features):
    """(input width, output width), checking that the layers' widths chain."""
    width = prev = None
    if input_features is not None:
        width, prev = V.positive_int("input_features", input_features), "input_features"
    out = width
    for i, layer in enumerate(model.layers):
        w = _width(layer)
        if w is None:
            continue
        if out is not None and w != out:
            raise ValueError(f"fastnn.onnx.export: layer {i} ({layer!r}) takes {w} features but {prev} "
                             f"gives {out}")
        if width is None:
            width = w
        out, prev = getattr(layer, "out_features", w), f"layer {i} ({layer!r})"
    return width, out


def export(model, path, *, input_features: int | None = None, opset: int = OPSET):
    """Write ``model`` (a fastnn ``Sequential``) in eval-mode form to ``path``
    as an ONNX file and return the ``onnx.ModelProto``.

    ``input_features`` is needed only when no layer tells the input width
    (a model of activations alone); when given, it must match the first
    layer's. ``opset`` runs from 17 to the newest the onnx package knows.
    Every layer's arrays are checked against its shape and dtype, and the
    widths must chain. The model itself is not changed.
    """
    _check(model)
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, numbers.Integral):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if opset < OPSET:
        raise ValueError(f"opset must be at least {OPSET} (LayerNormalization), got {opset}")
    for i, layer in enumerate(model.layers):
        _check_params(f"fastnn.onnx.export: layer {i} ({layer!r})", layer)
    dtype = _dtype(model)
    width, out_width = _widths(model, input_features)
    if width is None:
        raise ValueError("input_features is required: no layer of the model gives the input width")
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("fastnn.onnx.export needs the onnx package: pip install 'fastnn[onnx]'") from None
    if opset > onnx.defs.onnx_opset_version():  # a file no runtime could load
        raise ValueError(f"opset must be at most {onnx.defs.onnx_opset_version()} (the newest this onnx "
                         f"package knows), got {opset}")

    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes, inits = [], []
    counter = [0]

    def name(stem):
        counter[0] += 1
        return f"{stem}_{counter[0]}"

    def const(stem, value):
        n = name(stem)
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), n))
        return n

    def node(op, inputs, stem, **attrs):
        out = name(stem)
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    x = "input"
    for i, layer in enumerate(model.layers):
        t = type(layer)
        if t is nn.Linear:
            ins = [x, const(f"linear{i}.W", layer.W)]
            if layer.b is not None:
                ins.append(const(f"linear{i}.b", layer.b))
            x = node("Gemm", ins, f"linear{i}")
        elif t is nn.ReLU:
            x = node("Relu", [x], f"relu{i}")
        elif t is nn.LeakyReLU:
            x = node("LeakyRelu", [x], f"leaky_relu{i}", alpha=float(layer.alpha))
        elif t is nn.Sigmoid:
            x = node("Sigmoid", [x], f"sigmoid{i}")
        elif t is nn.Tanh:
            x = node("Tanh", [x], f"tanh{i}")
        elif t is nn.GELU:
            x3 = node("Mul", [node("Mul", [x, x], f"gelu{i}.x2"), x], f"gelu{i}.x3")
            inner = node("Add", [x, node("Mul", [x3, const(f"gelu{i}.a", 0.044715)], f"gelu{i}.ax3")],
                         f"gelu{i}.inner")
            th = node("Tanh", [node("Mul", [inner, const(f"gelu{i}.c", math.sqrt(2.0 / math.pi))],
                                    f"gelu{i}.scaled")], f"gelu{i}.tanh")
            half_x = node("Mul", [x, const(f"gelu{i}.half", 0.5)], f"gelu{i}.half_x")
            x = node("Mul", [half_x, node("Add", [th, const(f"gelu{i}.one", 1.0)], f"gelu{i}.one_plus")],
                     f"gelu{i}")
        elif t is nn.SiLU:
            x = node("Mul", [x, node("Sigmoid", [x], f"silu{i}.sigmoid")], f"silu{i}")
        elif t is nn.BatchNorm:
            x = node("BatchNormalization",
                     [x, const(f"bn{i}.gamma", layer.gamma), const(f"bn{i}.beta", layer.beta),
                      const(f"bn{i}.running_mean", layer.running_mean),
                      const(f"bn{i}.running_var", layer.running_var)],
                     f"bn{i}", epsilon=float(layer.eps))
        elif t is nn.LayerNorm:
            x = node("LayerNormalization",
                     [x, const(f"ln{i}.gamma", layer.gamma), const(f"ln{i}.beta", layer.beta)],
                     f"ln{i}", axis=-1, epsilon=float(layer.eps))
        # nn.Dropout: identity at inference, nothing to emit
    if x == "input":  # no op emitted (empty model or Dropout only)
        x = node("Identity", [x], "identity")
    nodes[-1].output[0] = "output"
    nodes[-1].name = "output"

    graph = helper.make_graph(
        nodes, "fastnn_sequential",
        [helper.make_tensor_value_info("input", elem, ["batch", width])],
        [helper.make_tensor_value_info("output", elem, ["batch", out_width])],
        initializer=inits,
    )
    proto = helper.make_model(graph, producer_name="fastnn",
                              opset_imports=[helper.make_opsetid("", int(opset))])
    if opset == OPSET:
        proto.ir_version = 8  # what opset 17 needs: readable by older runtimes too
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(path))
    return proto
