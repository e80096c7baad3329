"""Modules: thin, stateful wrappers around ``fastnn.functional``.

A module holds its parameters (``Parameter``: an ndarray with a ``.grad``),
caches in ``forward`` what ``backward`` needs, and runs on the backend given
by its ``backend`` attribute (``None``: the global one, see
``fastnn.set_backend``).

Gradient semantics: ``backward`` **overwrites** each parameter's gradient
(as the seed's ``self.dW = self.x.T @ dout``); it never accumulates.
``zero_grad()`` sets them to zero, which only matters for a parameter that
got no backward since. A module instance may therefore appear only once in
a model (its forward cache holds one input).

Arrays returned by ``forward``/``backward`` are fresh arrays, except where a
module is the identity (Dropout in eval mode or with p = 0 returns its input,
as ``F.dropout`` and PyTorch do); the module keeps a reference to what its
backward needs, so do not modify them in place before calling ``backward``.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from . import _config
from . import _inference
from . import _memory
from . import _step
from . import _validate as V
from . import functional as F
from . import init as _init
from .kernels import dropout as _K_drop
from .kernels import linear_act as _K_la
from .kernels.activations import CODES as _ACT_CODES
from .kernels.activations import RELU as _ACT_RELU
from .reference import linear_act as _R_la


class Parameter(np.ndarray):
    """A trainable array; ``p.grad`` is its gradient (same shape and dtype).

    Arithmetic on a Parameter gives plain ndarrays; slices are views without
    a ``grad``.
    """

    def __new__(cls, data, dtype=None):
        arr = np.array(data, dtype=dtype, order="C", copy=True)
        obj = arr.view(cls)
        obj.grad = _memory.zeros_at_same_page_offset(arr)
        return obj

    def __array_finalize__(self, obj):
        if not hasattr(self, "grad"):
            self.grad = None

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        if return_scalar:
            return arr[()]
        if arr is self:  # in place (p -= lr * p.grad): keep the Parameter and its grad
            return self
        return arr.view(np.ndarray) if type(arr) is not np.ndarray else arr

    def __reduce__(self):
        return (Parameter, (np.asarray(self),))

    def __deepcopy__(self, memo):
        # ndarray's own __deepcopy__ would skip __reduce__ and leave grad None
        p = Parameter(np.asarray(self))
        if isinstance(self.grad, np.ndarray) and self.grad.shape == p.shape:
            np.copyto(p.grad, self.grad)
        memo[id(self)] = p
        return p

    def __repr__(self) -> str:
        return "Parameter(" + repr(np.asarray(self))[6:]


def overrides(module, base, names=("forward", "backward")) -> bool:
    """True when ``module``'s class replaces one of ``base``'s methods: its
    own code must run, so fused and compiled paths (which compute ``base``'s
    op from its arrays) must not stand in for it."""
    cls = type(module)
    return any(getattr(cls, n, None) is not getattr(base, n, None) for n in names)


_PLAIN_TYPES = frozenset({np.ndarray, type(None), tuple, int, float, bool, str, dict})
# Sets an internal cache attribute without Module's registration (a list of
# modules assigned as usual would become a submodule list).
_set_cache = object.__setattr__


def _checked_real(name, **limits) -> property:
    """A float hyperparameter checked on assignment (``V.real(name, value,
    **limits)``), in the constructor and later: the fused and compiled paths
    pass it to their kernels without the functional ops' checks."""
    attr = "_" + name

    def get(self) -> float:
        return getattr(self, attr)

    def set_(self, value) -> None:
        setattr(self, attr, V.real(name, value, **limits))

    return property(get, set_, doc=f"``{name}``, checked on assignment.")


def _refuse_unregistered(module, name, value) -> None:
    """Parameters or modules inside a tuple, dict or mixed list would not be
    registered: not trained, saved or switched to eval mode. Refuse them."""
    items = value.values() if isinstance(value, dict) else value
    if any(isinstance(v, (Parameter, Module)) for v in items):
        raise TypeError(
            f"{type(module).__name__}.{name}: a {type(value).__name__} holding Parameters or modules would "
            f"not be registered (not trained, saved or put in eval mode); assign each Parameter or module "
            f"as an attribute of its own, or hold modules in a list of modules only")


def _module_list(value: list) -> bool:
    """An empty list (it may be filled with modules later) or a list of modules."""
    return not value or isinstance(value[0], Module)


def _plain(a: np.ndarray) -> np.ndarray:
    return a.view(np.ndarray) if type(a) is not np.ndarray else a


def _kept_targets(target: np.ndarray, y, kept) -> np.ndarray:
    """The targets a loss module keeps for its backward: ``target`` (``y``
    checked) itself when the checks made it a new array, else a copy (where
    ``_kept_destination`` says), so that a caller refilling its batch buffer
    before the backward changes nothing."""
    dest = _kept_destination(target, y, kept)
    if dest is not target:
        np.copyto(dest, target)
    return dest


def _kept_destination(target: np.ndarray, y, kept) -> np.ndarray:
    """Where a loss module copies its checked targets ``target`` (``y``
    checked): ``target`` itself when the checks made it a new array (no
    copy), else ``kept`` (the previous forward's copy) when the shape and
    dtype match, else a new array. A fresh (N, C) copy, allocated while the
    last one was still held, paid for its pages each step
    (``BCEWithLogitsLoss`` forward + backward, float64 (1024, 1024): 2.5-2.8
    ms a step, 0.85-0.88 reusing it)."""
    if target is not y and target.flags.owndata:
        return target
    if kept is not None and kept is not target and kept.shape == target.shape and kept.dtype == target.dtype:
        return kept
    return np.empty_like(target)


def _takes_training(forward) -> bool:
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "training" or p.kind == p.VAR_KEYWORD for p in params)


def _with_training(forward):
    """``forward(x)`` made callable as ``forward(x, training=...)``: a given
    mode other than the module's own is set for the call (``train``)."""

    @functools.wraps(forward)
    def wrapper(self, *args, training=None, **kwargs):
        if training is None or bool(training) == self.training:
            return forward(self, *args, **kwargs)
        prev = self.training
        self.train(training)
        try:
            return forward(self, *args, **kwargs)
        finally:
            self.train(prev)

    return wrapper


class Module:
    """Base class: parameters, train/eval, state_dict, backend.

    As in PyTorch, assigning a ``Parameter``, a ``Module`` or a list of
    modules to an attribute registers it (``_parameters``, ``_modules``), so
    that ``parameters()``, ``state_dict()``, ``train()``/``eval()`` and
    ``backend`` reach it; ``register_buffer(name, array)`` adds saved
    non-trainable state. A list of modules (also one assigned empty and
    filled later) names its members ``name.0``, ``name.1``, ...
    A subclass's ``forward`` may leave out the ``training`` argument.
    """

    training = True
    _backend = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fwd = cls.__dict__.get("forward")
        if fwd is not None and not _takes_training(fwd):
            cls.forward = _with_training(fwd)

    def __setattr__(self, name, value, _plain=_PLAIN_TYPES, _set=object.__setattr__):
        # The training step sets caches (arrays, tuples, None, counters): two lookups for those.
        if type(value) in _plain and name not in self.__dict__.get("_registered", ()):
            if type(value) in (tuple, dict) and name not in self.__dict__:  # first assignment only
                _refuse_unregistered(self, name, value)
            _set(self, name, value)
            return
        if type(value) is list and not _module_list(value):
            _refuse_unregistered(self, name, value)
        d = self.__dict__
        d.setdefault("_registered", set()).add(name)
        if isinstance(value, Parameter):
            d.setdefault("_parameters", {})[name] = value
            d.get("_modules", {}).pop(name, None)
            d.get("_buffers", {}).pop(name, None)  # else state_dict would save the old buffer
        elif isinstance(value, Module) or type(value) is list and _module_list(value):
            d.setdefault("_modules", {})[name] = value
            d.get("_parameters", {}).pop(name, None)
        else:
            params, mods, bufs = d.get("_parameters"), d.get("_modules"), d.get("_buffers")
            if params and name in params:
                if value is not None:
                    raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} of "
                                    f"{type(self).__name__}: wrap it in nn.Parameter (or assign None)")
                params[name] = None
            elif mods and name in mods:
                if value is not None:
                    raise TypeError(f"cannot assign {type(value).__name__} to submodule {name!r} of "
                                    f"{type(self).__name__}: expected a Module, a list of modules or None")
                mods[name] = None
            elif bufs and name in bufs:
                bufs[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for reg in ("_parameters", "_modules", "_buffers"):
            self.__dict__.get(reg, {}).pop(name, None)
        self.__dict__.get("_registered", set()).discard(name)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array) -> None:
        """Non-trainable state saved in ``state_dict`` (e.g. running statistics)."""
        if not isinstance(array, np.ndarray):
            raise TypeError(f"buffer {name!r} must be a numpy array, got {type(array).__name__}")
        self.__dict__.setdefault("_buffers", {})[name] = array
        self.__dict__.get("_parameters", {}).pop(name, None)  # one name, one role
        self.__dict__.setdefault("_registered", set()).add(name)
        object.__setattr__(self, name, array)

    # -- what a subclass may override (the built-in modules do)
    def _named_params(self):
        """(name, Parameter) pairs owned directly by this module."""
        return [(k, p) for k, p in self.__dict__.get("_parameters", {}).items() if p is not None]

    def _named_buffers(self):
        """(name, ndarray) non-trainable state saved in state_dict."""
        return [(k, b) for k, b in self.__dict__.get("_buffers", {}).items() if b is not None]

    def _children(self):
        out = []
        for name, m in self.__dict__.get("_modules", {}).items():
            if isinstance(m, Module):
                out.append((name, m))
            elif m is not None and any(isinstance(c, Module) for c in m):
                for i, child in enumerate(m):
                    if not isinstance(child, Module):
                        raise TypeError(f"{type(self).__name__}.{name}[{i}] must be a fastnn Module "
                                        f"like the rest of that list, got {type(child).__name__}")
                    out.append((f"{name}.{i}", child))
        return out

    # -- the PyTorch-shaped API
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x, training=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dout):  # pragma: no cover - abstract
        raise NotImplementedError

    def modules(self):
        """This module and every module inside it, depth first (as PyTorch's)."""
        yield self
        for _, child in self._children():
            yield from child.modules()

    def named_parameters(self, prefix: str = ""):
        for name, p in self._named_params():
            yield prefix + name, p
        for i, child in self._children():
            yield from child.named_parameters(f"{prefix}{i}.")

    def parameters(self) -> list:
        """The trainable arrays, each a ``Parameter`` whose ``.grad`` the
        backward writes; pass this list to an optimizer."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        for name, b in self._named_buffers():
            yield prefix + name, b
        for i, child in self._children():
            yield from child.named_buffers(f"{prefix}{i}.")

    def zero_grad(self) -> None:
        """Every parameter's gradient set to zero in place; a gradient set to
        None gets a fresh zero array (kernels write into it)."""
        for name, p in self.named_parameters():
            g = p.grad
            if g is None:
                p.grad = _memory.zeros_at_same_page_offset(p)
            elif isinstance(g, np.ndarray) and g.shape == p.shape and g.dtype == p.dtype:
                g.fill(0)
            else:
                raise ValueError(f"{name}.grad must be an array of the parameter's shape {p.shape} and "
                                 f"dtype {p.dtype} (or None), got "
                                 + (type(g).__name__ if not isinstance(g, np.ndarray)
                                    else f"shape {g.shape}, dtype {g.dtype}"))

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for _, child in self._children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def backend(self):
        """``"numba"``, ``"numpy"`` or None (follow ``fastnn.set_backend``)."""
        return self._backend

    @backend.setter
    def backend(self, name):
        if name is not None:
            F._check_backend(name)
        self._backend = name
        for _, child in self._children():
            child.backend = name

    def state_dict(self) -> dict:
        """Copies of every parameter and buffer, by dotted name."""
        out = {name: np.array(p) for name, p in self.named_parameters()}
        out.update({name: np.array(b) for name, b in self.named_buffers()})
        return out

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into the existing parameters and buffers (in place, so
        optimizers keep their references). Names, shapes and dtypes must
        match; every difference is listed in the error."""
        targets = dict(self.named_parameters())
        targets.update(self.named_buffers())
        problems = []
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing:
            problems.append(f"missing: {missing}")
        if unexpected:
            problems.append(f"unexpected: {unexpected}")
        for name in sorted(set(targets) & set(state)):
            src, dst = np.asarray(state[name]), targets[name]
            if src.shape != dst.shape:
                problems.append(f"{name}: shape {src.shape} in the state, {dst.shape} in the model")
            elif src.dtype != dst.dtype:
                problems.append(f"{name}: dtype {src.dtype} in the state, {dst.dtype} in the model")
        for name in sorted(set(targets) & set(state)):
            # a Dropout's step counts forwards; a negative one cannot make a mask
            if (name == "step" or name.endswith(".step")) and targets[name].dtype == np.int64 \
                    and (np.asarray(state[name]) < 0).any():
                problems.append(f"{name}: a step count must be non-negative, got {np.asarray(state[name])}")
        if problems:
            raise ValueError("state does not match the model: " + "; ".join(problems))
        for name, dst in targets.items():
            dst[...] = state[name]

    def __repr__(self):
        lines = [f"  ({name}): Parameter{tuple(p.shape)} {p.dtype}" for name, p in self._named_params()]
        for name, child in self._children():
            inner = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {inner}")
        if not lines:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"

    def summary(self, input_dim: int | None = None) -> str:
        """A table of the modules (dotted names), their own parameter counts
        and, given ``input_dim`` for a ``Sequential``, each layer's output
        width (one zero row in eval mode); totals at the end."""
        rows = [("name", "module", "output", "params")]
        widths = {}
        if input_dim is not None and isinstance(self, Sequential):
            x = np.zeros((1, V.positive_int("input_dim", input_dim)), self._dtype() or np.float32)
            prev = self.training
            self.train(False)
            try:
                for i, layer in enumerate(self.layers):
                    x = layer.forward(x, training=False)
                    widths[str(i)] = f"(N, {x.shape[1]})" if x.ndim == 2 else str(x.shape)
            finally:
                self.train(prev)

        def walk(mod, prefix):
            for name, child in mod._children():
                full = f"{prefix}{name}"
                own = sum(p.size for _, p in child._named_params())
                text = repr(child)
                label = type(child).__name__ if child._children() or "\n" in text else text
                rows.append((full, label, widths.get(full, ""), f"{own:,}" if own else "0"))
                walk(child, full + ".")

        own = sum(p.size for _, p in self._named_params())
        if own:
            rows.append(("(own)", ", ".join(n for n, _ in self._named_params()), "", f"{own:,}"))
        walk(self, "")
        total = sum(p.size for p in self.parameters())
        cols = [max(len(r[k]) for r in rows) for k in range(4)]
        lines = ["  ".join(r[k].ljust(cols[k]) if k < 3 else r[k].rjust(cols[k]) for k in range(4)).rstrip()
                 for r in rows]
        rule = "-" * len(lines[0])
        return "\n".join([f"{type(self).__name__}", rule, lines[0], rule] + lines[1:]
                         + [rule, f"trainable parameters: {total:,}"])

    def _dtype(self):
        params = self.parameters()
        return params[0].dtype if params else None

    def _is_training(self, training) -> bool:
        return self.training if training is None else bool(training)

    def _need(self, cached, what="forward"):
        if cached is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before {what}")
        return cached


class Linear(Module):
    """y = x @ W + b, with ``W: (in_features, out_features)`` as in the seed.

    init: ``"he"`` (default, for ReLU) or ``"xavier"`` (for sigmoid/tanh).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: str = "he", dtype=np.float32, rng=None):
        self.in_features = V.positive_int("in_features", in_features)
        self.out_features = V.positive_int("out_features", out_features)
        if init not in _init.INITIALIZERS:
            raise ValueError(f"init must be one of {sorted(_init.INITIALIZERS)}, got {init!r}")
        dtype = V.float_dtype("dtype", dtype)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)) or None, "
                            f"got {type(rng).__name__}")
        self.W = Parameter(_init.INITIALIZERS[init](in_features, out_features, dtype=dtype, rng=rng))
        self.b = Parameter(np.zeros(out_features, dtype)) if bias else None
        self.x = None

    @property
    def dtype(self):
        return self.W.dtype

    @property
    def dW(self):
        return self.W.grad

    @property
    def db(self):
        return None if self.b is None else self.b.grad

    def _named_params(self):
        return [("W", self.W)] + ([("b", self.b)] if self.b is not None else [])

    def _check_params(self, grads: bool = False) -> None:
        """W and b (and with ``grads`` their gradients) against the layer's
        shape and W's dtype: the fused and compiled paths hand them to kernels
        that do no bounds checking, and a Parameter may have been replaced."""
        shape = (self.in_features, self.out_features)
        named = [("W", self.W, shape)] + ([] if self.b is None else [("b", self.b, shape[1:])])
        dt = None
        for name, p, want in named:
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{name} of {self!r} must be a Parameter, got {type(p).__name__}")
            V.float_array(name, _plain(p), ndim=len(want), dtype=dt)
            if p.shape != want:
                raise ValueError(f"{name} must have shape {want} for {self!r}, got {p.shape}")
            if not p.flags.c_contiguous:
                raise ValueError(f"{name} of {self!r} must be C-contiguous")
            dt = p.dtype
            g = getattr(p, "grad", None)
            if grads and not (isinstance(g, np.ndarray) and g.shape == p.shape and g.dtype == p.dtype
                              and g.flags.c_contiguous and g.flags.writeable):
                got = (f"shape {g.shape}, dtype {g.dtype}" if isinstance(g, np.ndarray)
                       else type(g).__name__)
                raise ValueError(f"{name}.grad of {self!r} must be a writeable C-contiguous array of "
                                 f"shape {p.shape} and dtype {p.dtype}, got {got}")

    def forward(self, x, training=None):
        W = self.W
        if not isinstance(W, np.ndarray) or W.shape != (self.in_features, self.out_features):
            self._check_params()  # a replaced W: named here, not by the next layer
        x = V.float_array("x", x, ndim=2, dtype=self.W.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"x must have shape (N, {self.in_features}) for {self!r}, got {x.shape}"
            )
        self.x = x
        return F.linear(x, _plain(self.W), None if self.b is None else _plain(self.b), backend=self._backend)

    def backward(self, dout, need_dx: bool = True):
        x = self._need(self.x)
        dx, _, _ = F.linear_backward(
            dout, x, _plain(self.W), dW=self.W.grad,
            db=None if self.b is None else self.b.grad,
            need_dx=need_dx, has_bias=self.b is not None, backend=self._backend,
        )
        return dx

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}{'' if self.b is not None else ', bias=False'})"


class _Activation(Module):
    name = ""

    def __init__(self):
        self.saved = None

    def forward(self, x, training=None):
        y = F.activation(self.name, x, alpha=getattr(self, "alpha", 0.01), backend=self._backend)
        self.saved = y if self.name in F.SAVES_OUTPUT else V.float_array("x", x)
        return y

    def backward(self, dout):
        saved = self._need(self.saved)
        return F.activation_backward(self.name, dout, saved, alpha=getattr(self, "alpha", 0.01),
                                     backend=self._backend)

    def __repr__(self):
        return f"{type(self).__name__}()"


class ReLU(_Activation):
    """max(x, 0)."""
    name = "relu"


class LeakyReLU(_Activation):
    """x if x > 0 else alpha * x."""
    name = "leaky_relu"

    def __init__(self, alpha: float = 0.01):
        super().__init__()
        self.alpha = alpha

    alpha = _checked_real("alpha")

    def __repr__(self):
        return f"LeakyReLU(alpha={self.alpha})"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), overflow-free."""
    name = "sigmoid"


class Tanh(_Activation):
    name = "tanh"


class GELU(_Activation):
    """The tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    name = "gelu"


class SiLU(_Activation):
    """x * sigmoid(x) (Swish)."""
    name = "silu"


Swish = SiLU


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and
    scale the rest by 1/(1-p); identity in eval mode.

    The mask depends only on (seed, step, element index): ``seed`` defaults
    to a draw from fastnn's generator (``fastnn.manual_seed``), ``step``
    counts this module's training forwards. Same seed, same masks, on both
    backends and for any thread count. ``row_offset``: the input's rows are
    rows ``row_offset..`` of a larger batch, whose masks they get (set per
    step by data-parallel ``fit``).
    """

    row_offset = 0
    # Inputs of this many bytes and more keep no mask: the backward hashes it
    # again, at copy speed, instead of the forward writing it and the backward
    # reading it (kernels at (4096, 1024) float32, 2 threads: 0.49 + 0.49 ms
    # against 0.60 + 0.55). Below, in cache, reading the mask costs less than
    # the hash (docs/design.md, "Dropout: a product, not a select").
    HASH_AGAIN_FROM = 4 << 20

    def __init__(self, p: float = 0.5, seed: int | None = None):
        self.p = p
        if seed is None:
            seed = int(_init.default_rng().integers(0, 2**63 - 1))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        # seed and step live in 0-d arrays so that state_dict/load_state_dict
        # (also through a parent) restore them in place; the key only depends
        # on seed mod 2**64.
        self._seed = np.array(int(seed) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
        self._step = np.zeros((), dtype=np.int64)
        self.mask = None
        self._ran = False  # a forward ran: backward before it is an error, as for other modules

    p = _checked_real("p", lo=0, hi=1, hi_open=True)

    @property
    def mask(self):
        """The last training forward's mask (uint8 of the input's shape, 1 =
        kept), or None after an eval forward. Inputs of ``HASH_AGAIN_FROM``
        bytes and more train without storing it (the backward hashes it
        again): then it is computed on first access."""
        if self._mask is None and self._key is not None:
            seed, step, row_offset, p, shape = self._key
            self._mask = F.dropout_mask(shape, p, seed=seed, step=step, row_offset=row_offset)
        return self._mask

    @mask.setter
    def mask(self, value) -> None:
        # the fused and compiled paths hand over the mask their kernels wrote
        self._mask = value
        self._key = None

    @property
    def seed(self) -> int:
        return int(self._seed)

    @seed.setter
    def seed(self, value) -> None:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(value).__name__}")
        self._seed[...] = int(value) & 0xFFFFFFFFFFFFFFFF

    @property
    def step(self) -> int:
        """Training forwards so far (the mask of forward k uses step k)."""
        return int(self._step)

    @step.setter
    def step(self, value) -> None:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"step must be an int, got {type(value).__name__}")
        if not 0 <= value < 2**63:
            raise ValueError(f"step must be a count of forwards in [0, 2**63), got {value}")
        self._step[...] = value

    def _named_buffers(self):
        return [("seed", self._seed), ("step", self._step)]

    def _next_step(self) -> int:
        """``step += 1`` for a training forward; the new step (the property's
        checks cost microseconds a call, paid by every training step)."""
        step = int(self._step) + 1
        if step >= 2**63:
            raise ValueError("step must be a count of forwards in [0, 2**63): this Dropout "
                             "has reached the end of its mask sequence")
        self._step[()] = step
        return step

    def forward(self, x, training=None):
        training = self._is_training(training)
        if training and self.p > 0 and isinstance(x, np.ndarray) and x.nbytes >= self.HASH_AGAIN_FROM:
            step = self._next_step()
            y = F.dropout_by_key(x, self.p, seed=self.seed, step=step, row_offset=self.row_offset,
                                 backend=self._backend)
            self.mask = None
            self._key = (self.seed, step, self.row_offset, self.p, y.shape)
        elif training and self.p > 0:
            step = self._next_step()
            y, self.mask = F.dropout(x, self.p, seed=self.seed, step=step, training=True,
                                     backend=self._backend, row_offset=self.row_offset)
        else:
            y, self.mask = F.dropout(x, self.p, seed=self.seed, step=self.step, training=False,
                                     backend=self._backend, row_offset=self.row_offset)
        self._ran = True
        return y

    def backward(self, dout):
        if not self.__dict__.get("_ran"):  # (mask None is also eval mode's: it cannot tell)
            self._need(None)
        if self._key is None:  # a stored mask (small input, fused path) or eval mode
            return F.dropout_backward(dout, self._mask, self.p, backend=self._backend)
        seed, step, row_offset, p, shape = self._key
        dout = V.float_array("dy", dout)
        if dout.shape != shape:
            raise ValueError(f"dy must have the shape of the dropout mask {shape} (the forward's input), "
                             f"got {dout.shape}")
        return F.dropout_by_key(dout, p, seed=seed, step=step, row_offset=row_offset,
                                backend=self._backend, name="dy")

    def __repr__(self):
        return f"Dropout(p={self.p})"


class BatchNorm(Module):
    """Batch normalisation over axis 0 of ``x: (N, dim)``.

    Training: batch mean and biased variance; the running statistics follow
    ``running = (1 - momentum) * running + momentum * batch`` (the seed's
    rule; PyTorch stores the unbiased variance instead). Eval: the running
    statistics. A training batch needs at least 2 samples.

    ``sync``: None, or an object whose ``forward(bn, x)`` and ``backward(bn,
    dout, x, mean, rstd, total)`` replace the training forward and backward
    (``fastnn.distributed.SyncBatchNorm``: statistics over all processes).
    """

    sync = None
    min_train_batch = 2  # fit drops a smaller last batch

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, *, dtype=np.float32):
        self.dim = V.positive_int("dim", dim)
        self.eps = eps
        self.momentum = momentum
        dtype = V.float_dtype("dtype", dtype)
        self.gamma = Parameter(np.ones(dim, dtype))
        self.beta = Parameter(np.zeros(dim, dtype))
        self.running_mean = np.zeros(dim, dtype)
        self.running_var = np.ones(dim, dtype)
        self._cache = None

    eps = _checked_real("eps", lo=0, lo_open=True)
    momentum = _checked_real("momentum", lo=0, hi=1)

    @property
    def dgamma(self):
        return self.gamma.grad

    @property
    def dbeta(self):
        return self.beta.grad

    def _named_params(self):
        return [("gamma", self.gamma), ("beta", self.beta)]

    def _named_buffers(self):
        return [("running_mean", self.running_mean), ("running_var", self.running_var)]

    def forward(self, x, training=None):
        x = V.float_array("x", x, ndim=2, dtype=self.gamma.dtype)
        if x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}) for {self!r}, got {x.shape}")
        training = self._is_training(training)
        if training and self.sync is not None:
            y, mean, rstd, total = self.sync.forward(self, x)
            self._cache = (x, mean, rstd, total)
            return y
        y, mean, rstd = F.batchnorm(
            x, _plain(self.gamma), _plain(self.beta), eps=self.eps, training=training,
            running_mean=self.running_mean, running_var=self.running_var,
            momentum=self.momentum, backend=self._backend,
        )
        self._cache = (x, mean, rstd) if training else None
        return y

    def backward(self, dout):
        x, mean, rstd, *total = self._need(self._cache, "a training-mode forward")
        if total:
            return self.sync.backward(self, V.float_array("dout", dout, ndim=2, dtype=x.dtype), x, mean, rstd,
                                      total[0])
        dx, _, _ = F.batchnorm_backward(dout, x, mean, rstd, _plain(self.gamma),
                                        dgamma=self.gamma.grad, dbeta=self.beta.grad,
                                        backend=self._backend)
        return dx

    def __repr__(self):
        return f"BatchNorm({self.dim}, eps={self.eps}, momentum={self.momentum})"


BatchNorm1d = BatchNorm


class LayerNorm(Module):
    """Layer normalisation over the last axis (of size ``dim``)."""

    def __init__(self, dim: int, eps: float = 1e-5, *, dtype=np.float32):
        self.dim = V.positive_int("dim", dim)
        self.eps = eps
        dtype = V.float_dtype("dtype", dtype)
        self.gamma = Parameter(np.ones(dim, dtype))
        self.beta = Parameter(np.zeros(dim, dtype))
        self._cache = None

    eps = _checked_real("eps", lo=0, lo_open=True)

    @property
    def dgamma(self):
        return self.gamma.grad

    @property
    def dbeta(self):
        return self.beta.grad

    def _named_params(self):
        return [("gamma", self.gamma), ("beta", self.beta)]

    def forward(self, x, training=None):
        x = V.float_array("x", x, dtype=self.gamma.dtype)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x's last axis must have size {self.dim} for {self!r}, got shape {x.shape}")
        y, mean, rstd = F.layernorm(x, _plain(self.gamma), _plain(self.beta), eps=self.eps,
                                    backend=self._backend)
        self._cache = (x, mean, rstd)
        return y

    def backward(self, dout):
        x, mean, rstd = self._need(self._cache)
        dx, _, _ = F.layernorm_backward(dout, x, mean, rstd, _plain(self.gamma),
                                        dgamma=self.gamma.grad, dbeta=self.beta.grad,
                                        backend=self._backend)
        return dx

    def __repr__(self):
        return f"LayerNorm({self.dim}, eps={self.eps})"


class SoftmaxCrossEntropy(Module):
    """Mean cross-entropy of softmax(logits).

    ``forward(logits, y)`` returns the loss as a float; ``y`` is integer class
    indices (N,) or one-hot/soft targets (N, C). ``backward()`` returns
    dlogits = (softmax(logits) - onehot(y)) / N.

    In training mode the forward also computes the gradient, in the same
    pass over the logits (``F.softmax_xent_loss_grad``: one exp per element
    and two passes over (N, C) arrays for forward + backward, against two
    exps and three passes when the backward recomputes the probabilities),
    and the next ``backward()`` hands it over. In eval mode (or
    ``forward(..., training=False)``) the forward writes no (N, C) array and a
    backward recomputes the gradient from the logits, which the forward keeps
    (as Linear keeps its input) with each row's max and exp-sum
    (``F.softmax_xent_loss`` / ``F.softmax_xent_grad``); so does a second
    backward. ``probs`` computes the probabilities on request.
    """

    classification = True  # fit tracks accuracy by default
    target_kind = "labels"  # fit checks every label against the output width up front

    def __init__(self):
        self._logits = None
        self._stats = None
        self._target = None
        self._grad = None  # the training forward's gradient, until a backward takes it

    @property
    def probs(self):
        """softmax of the last forward's logits (computed on each access), or None."""
        if self._logits is None:
            return None
        rowmax, rowsum = self._stats
        p = np.exp(self._logits - rowmax[:, None])
        p /= rowsum[:, None]
        return p

    def forward(self, logits, y, training=None):
        self._grad = None
        # Own copy of the targets: the backward indexes with the labels without
        # checking them again, so a caller changing y in between must not reach it.
        prev = self._target  # the last forward's copy
        if self._is_training(training):
            loss, self._logits, self._stats, self._target, self._grad = F._softmax_xent_loss_grad(
                logits, y, self._backend, keep=lambda target: _kept_destination(target, y, prev))
        else:
            loss, self._logits, self._stats, target = F._softmax_xent_loss(logits, y, self._backend)
            self._target = _kept_targets(target, y, prev)
        return loss

    def backward(self, dout=None):
        logits = self._need(self._logits)
        scale = None if dout is None else V.real("dout", dout)
        d, self._grad = self._grad, None  # the caller owns it from here: never handed out twice
        if d is None:
            d = _memory.empty(logits.shape, logits.dtype)
            F._xent_run("grad", (d,), (logits, *self._stats), self._target, self._backend)
        if scale is not None:
            d *= scale
        return d

    def __repr__(self):
        return "SoftmaxCrossEntropy()"


class _LinearActBlock:
    """Linear [+ activation] [+ Dropout] run as one fused op (kernels.linear_act).

    Keeps the member modules' state as the unfused path would: the Linear's
    cached input, the Dropout's step counter and mask (the same masks, since
    both draw from (seed, step, index)). Internal buffers are reused across
    calls unless the block's output or input gradient leaves the Sequential.
    """

    def __init__(self, linear, act, drop):
        self.linear, self.act, self.drop = linear, act, drop
        self.code = _ACT_CODES["identity" if act is None else act.name]
        self._bufs = {}
        self._cache = None
        self._seen = (None, None, None, None)  # W, b, W.grad, b.grad as last checked

    @property
    def alpha(self) -> float:
        """The activation's, read at each call: LeakyReLU.alpha may change."""
        return getattr(self.act, "alpha", 0.01)

    def _params(self, grads=False):
        """The Linear's (W, b), checked (``Linear._check_params``) when either
        or, with ``grads``, a gradient is not the one checked last time."""
        lin = self.linear
        W, b = lin.W, lin.b
        seen = self._seen
        if W is not seen[0] or b is not seen[1] or grads and (W.grad is not seen[2] or b.grad is not seen[3]):
            if b is None:  # the plan fuses only a Linear with a bias; a forward re-plans
                raise ValueError(f"b of {lin!r} was set to None after the forward; run the forward again")
            lin._check_params(grads)
            self._seen = (W, b) + ((W.grad, b.grad) if grads else (None, None))
        return W, b

    def _buffers(self, n, dt):
        """(y, z, mask, dz, dx) for batch size n, allocated once per size."""
        key = (n, dt)
        bufs = self._bufs.get(key)
        if bufs is None:
            h, d = self.linear.out_features, self.linear.in_features
            z = np.empty((n, h), dt) if self.code != _ACT_RELU else _EMPTY2[dt]
            bufs = self._bufs[key] = (np.empty((n, h), dt), z, np.empty((n, h), np.uint8),
                                      np.empty((n, h), dt), np.empty((n, d), dt))
        return bufs

    def forward(self, x, training, backend, reuse_out):
        lin = self.linear
        W, b = self._params()
        dt = W.dtype
        x = V.float_array("x", x, ndim=2, dtype=dt)
        if x.shape[1] != lin.in_features:
            raise ValueError(f"x must have shape (N, {lin.in_features}) for {lin!r}, got {x.shape}")
        y, z, mask, _, _ = self._buffers(x.shape[0], dt)
        if not reuse_out:  # the output leaves the Sequential: never overwrite it later
            y = _memory.empty(y.shape, y.dtype)
        drop = self.drop
        if drop is not None and drop.p > 0 and drop._is_training(training):
            step = np.uint64(drop._next_step())
            p = drop.p
            scale, threshold = 1.0 / (1.0 - p), _K_drop.dropout_threshold(p)
            seed, row0 = np.uint64(drop.seed), int(drop.row_offset)
        else:
            scale, threshold, seed, step, mask, row0 = 1.0, 0, _ZERO_U64, _ZERO_U64, _EMPTY2_U8, 0
        args = (y, z, mask, x, _plain(W), _plain(b), self.code, self.alpha, seed, step, threshold, scale,
                row0)
        if F._finite_maybe and F._check_finite:  # dropout would hide a NaN in W from the output check
            F._finite("linear_act_forward", "received", x=x, W=W, b=b)
        (_K_la if F._numba(backend) else _R_la).linear_act_forward(*args)
        if F._finite_maybe and F._check_finite:
            F._finite("linear_act_forward", "produced", y=y)
        lin.x = x
        if self.act is not None:
            self.act.saved = None  # its own cache would be stale
        if drop is not None:
            drop.mask = mask if mask.size else None
            drop._ran = True
        self._cache = (x, y, z, mask, scale)
        return y

    def backward(self, dout, need_dx, backend, reuse_dx):
        if self._cache is None:
            raise RuntimeError("Sequential.backward called before forward")
        x, y, z, mask, scale = self._cache
        W, b = self._params(grads=True)
        dt = W.dtype
        dy = V.float_array("dout", dout, ndim=2, dtype=dt)
        V.same_shape("dout", dy, "the block's output", y)
        _, _, _, dz, dx = self._buffers(x.shape[0], dt)
        if not need_dx:
            dx = None
        elif not reuse_dx:  # returned to the caller: a fresh array
            dx = _memory.empty(dx.shape, dx.dtype)
        args = (dx, W.grad, b.grad, dz, dy, x, _plain(W), y, z, mask,
                self.code, self.alpha, scale)
        if F._finite_maybe and F._check_finite:
            F._finite("linear_act_backward", "received", dout=dy)
        if F._numba(backend):
            _K_la.linear_act_backward(*args)
        else:
            _R_la.linear_act_backward(*args)
        if F._finite_maybe and F._check_finite:
            F._finite("linear_act_backward", "produced", dx=dx, dW=W.grad, db=b.grad)
        return dx


# What a fused block stands in for (exact types), and the built-in modules
# whose forward and backward always return fresh arrays (Dropout in eval mode
# returns its input).
_FUSED_ACTIVATIONS = frozenset({ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU})
_FRESH_ARRAYS = frozenset({Linear, BatchNorm, LayerNorm}) | _FUSED_ACTIVATIONS


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``Sequential(layers, backend=None, fuse=True)``. ``forward(x, training=None)``
    follows ``train()``/``eval()`` unless ``training`` is given.
    ``backward(dout, need_input_grad=True)``: with False the first layer
    skips the gradient with respect to the input (one matrix product fewer)
    and None is returned.

    The seed's loop (``fastnn.train.train``) also works:
    ``loss = model.compute_loss(output, y)`` (``loss=`` module, default
    ``SoftmaxCrossEntropy``), ``model.backward()`` (dout from that loss),
    ``model.update(lr)`` (plain SGD).

    With ``fuse=True`` each run of Linear (with bias), an optional activation
    and an optional Dropout executes as one fused op (``kernels.linear_act``):
    the same results as layer by layer (bit-identical masks, activations
    within rounding), in fewer passes over memory and fewer calls.
    """

    def __init__(self, layers, backend=None, fuse=True, loss=None):
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a fastnn Module, got {type(layer).__name__}")
        if len({id(m) for m in layers}) != len(layers):
            raise ValueError("a module instance may appear only once in a Sequential")
        self.layers = layers
        self.backend = backend
        self.fuse = bool(fuse)
        self._blocks = None
        self._block_key = None
        self._fused = ()
        self._ran = None
        if loss is not None and not isinstance(loss, Module):
            raise TypeError(f"loss must be a fastnn Module (e.g. SoftmaxCrossEntropy()), got {type(loss).__name__}")
        self.loss = loss
        self._sgd = None

    # -- the seed's training-loop interface (fastnn.train.train)
    def compute_loss(self, output, y) -> float:
        """``self.loss.forward(output, y)``; the loss is ``SoftmaxCrossEntropy``
        unless one was given as ``Sequential(..., loss=...)``."""
        if self.loss is None:
            self.loss = SoftmaxCrossEntropy()
        self.loss.backend = self._backend
        return self.loss.forward(output, y)

    def update(self, lr) -> None:
        """The seed's ``model.update(lr)``: one plain SGD step, ``p -= lr * p.grad``."""
        from .optim import SGD  # optim imports nn

        if self._sgd is None or [id(p) for p in self._sgd.params] != [id(p) for p in self.parameters()]:
            self._sgd = SGD(self.parameters(), lr=lr, backend=self._backend)
        self._sgd.lr = lr
        self._sgd.backend = self._backend
        self._sgd.step()

    def train_on_batch(self, X, y, epochs: int = 1, lr=None, optimizer: str = "adam") -> list:
        """The seed's check ``model.train_on_batch(X[:32], y[:32], epochs=100)``:
        ``epochs`` training steps (forward, the model's loss, backward, update)
        on one batch; returns the loss of each step (before its update).

        ``optimizer="adam"`` (default, lr 1e-3) or ``"sgd"`` (the seed's
        ``update(lr)``, lr 0.01). Adam is the default because the check wants a
        loss near 0 within 100 steps: on 32 Fashion-MNIST images the seed's
        network reaches about 0.01 with Adam, 0.7 with SGD at lr 0.01. The
        optimizer is kept per model, so repeated calls continue its state.
        """
        from .optim import SGD, Adam  # optim imports nn

        epochs = V.positive_int("epochs", epochs)
        kinds = {"adam": (Adam, 1e-3), "sgd": (SGD, 0.01)}
        if optimizer not in kinds:
            raise ValueError(f"optimizer must be one of {sorted(kinds)}, got {optimizer!r}")
        cls, default_lr = kinds[optimizer]
        opt = getattr(self, "_batch_optimizer", None)
        if type(opt) is not cls or [id(p) for p in opt.params] != [id(p) for p in self.parameters()]:
            opt = self._batch_optimizer = cls(self.parameters(), lr=default_lr if lr is None else lr)
        elif lr is not None:
            opt.lr = lr
        opt.backend = self._backend
        losses = []
        for _ in range(epochs):
            losses.append(float(self.compute_loss(self.forward(X, training=True), y)))
            self.backward(need_input_grad=False)
            opt.step()
        return losses

    def _children(self):
        return list(enumerate(self.layers))

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def _plan(self):
        """Group layers into fused blocks (cached while the layer list is unchanged)."""
        key = (self.fuse, tuple(map(id, self.layers)))
        if key == self._block_key:
            for lin in self._fused:  # only a Linear with a bias fuses: b set to None later re-plans
                if lin.b is None:
                    break
            else:
                return self._blocks
        if len(set(key[1])) != len(key[1]):  # also after self.layers was changed in place
            raise ValueError("a module instance may appear only once in a Sequential")
        for i, layer in enumerate(self.layers):  # as the constructor: also for layers appended later
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a fastnn Module, got {type(layer).__name__}")
        layers, blocks, i = self.layers, [], 0
        while i < len(layers):
            layer = layers[i]
            # exact types only: a subclass's own forward/backward must run
            if self.fuse and type(layer) is Linear and layer.b is not None:
                j, act, drop = i + 1, None, None
                if j < len(layers) and type(layers[j]) in _FUSED_ACTIVATIONS:
                    act, j = layers[j], j + 1
                if j < len(layers) and type(layers[j]) is Dropout:
                    drop, j = layers[j], j + 1
                if act is not None or drop is not None:
                    blocks.append(_LinearActBlock(layer, act, drop))
                    i = j
                    continue
            blocks.append(layer)
            i += 1
        _set_cache(self, "_blocks", blocks)  # caches, not submodule lists
        self._block_key = key
        _set_cache(self, "_fused", tuple(blk.linear for blk in blocks if isinstance(blk, _LinearActBlock)))
        # A fused block writes into a buffer it reuses at the next call unless its result
        # could reach the caller: only when a later block (earlier, for dx) makes a fresh
        # array can nothing after it (a module returning its input, a view) hand it out.
        fresh = [isinstance(blk, _LinearActBlock) or type(blk) in _FRESH_ARRAYS for blk in blocks]
        self._reuse_out = [any(fresh[k + 1:]) for k in range(len(blocks))]
        self._reuse_dx = [any(fresh[:k]) for k in range(len(blocks))]
        return blocks

    def forward(self, x, training=None):
        with _config.between_products():  # kernels between BLAS products: see _config
            return self._forward(x, training)

    def _forward(self, x, training):
        training = self._is_training(training)
        if not training:  # inference fast path, no saved activations (fastnn/_inference.py)
            y = _inference.eval_forward(self, x)
            if y is not None:
                return y
        else:  # the compiled training step's forward where it applies (fastnn/_step.py)
            y = _step.module_forward(self, x)
            if y is not None:
                _set_cache(self, "_ran", _step.PROGRAM_RAN)
                return y
        blocks = self._plan()
        backend, reuse = self._backend, self._reuse_out
        for k, block in enumerate(blocks):
            if isinstance(block, _LinearActBlock):
                x = block.forward(x, training, backend, reuse_out=reuse[k])
            else:
                x = block.forward(x, training=training)
        _set_cache(self, "_ran", blocks)  # a cache, not a submodule list
        return x

    def backward(self, dout=None, need_input_grad: bool = True):
        with _config.between_products():
            return self._backward(dout, need_input_grad)

    def _backward(self, dout, need_input_grad):
        if dout is None:  # the seed's model.backward() after model.compute_loss()
            if self.loss is None:
                raise RuntimeError("Sequential.backward() without dout needs model.compute_loss(output, y) first")
            dout = self.loss.backward()
        blocks = self._ran
        if blocks is None:
            raise RuntimeError("Sequential.backward called before forward")
        if blocks is _step.PROGRAM_RAN and F._finite_maybe and F._check_finite:
            blocks = self._plan()  # the layer path (its ops check their arrays) from the modules' state
        if blocks is _step.PROGRAM_RAN:
            prog = self._program[1]
            dout = V.float_array("dout", dout, ndim=2, dtype=prog.dtype)
            n = prog._module_state[0][0].shape[0]
            if dout.shape != (n, prog.out_width):
                raise ValueError(f"dout must have the shape of the model's output {(n, prog.out_width)}, "
                                 f"got {dout.shape}")
            if not (dout.flags.c_contiguous and dout.flags.writeable and dout.flags.aligned):
                dout = np.array(dout, order="C")
            return prog.module_backward(dout, bool(need_input_grad))
        backend, reuse = self._backend, self._reuse_dx
        for k in range(len(blocks) - 1, -1, -1):
            block = blocks[k]
            if isinstance(block, _LinearActBlock):
                dout = block.backward(dout, need_dx=k > 0 or need_input_grad, backend=backend,
                                      reuse_dx=reuse[k])
            elif k == 0 and isinstance(block, Linear):
                return block.backward(dout, need_dx=need_input_grad)
            else:
                dout = block.backward(dout)
        return dout

    def __repr__(self):
        inner = ",\n".join(f"  {layer!r}" for layer in self.layers)
        return f"Sequential([\n{inner}\n])"


# The fused block's "nothing saved" arguments, shared with the eval fast path.
_EMPTY2, _EMPTY2_U8, _ZERO_U64 = _inference._EMPTY2, _inference._EMPTY2_U8, _inference._ZERO_U64


# ---------------------------------------------------------------- other losses


class _PointwiseLoss(Module):
    """``forward(pred, y)`` returns the loss as a float (``reduction``:
    ``"mean"`` over all elements or ``"sum"``); ``backward()`` returns
    d(loss)/d(pred), of pred's shape. Targets have the predictions' shape.

    In training mode the forward also computes the gradient, in the same
    pass (the predictions and targets read once), and the next
    ``backward()`` hands it over; in eval mode (or ``forward(...,
    training=False)``) the backward computes it."""

    kind = ""
    classification = False
    target_kind = "values"

    def __init__(self, reduction: str = "mean"):
        if reduction not in F.REDUCTIONS:
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.delta, self.pos_weight = 1.0, None
        self._cache = None
        self._grad = None  # the training forward's gradient, until a backward takes it

    def forward(self, pred, y, training=None):
        self._grad = None
        prev = self._cache[2] if self._cache is not None else None  # the last forward's copy
        if self._is_training(training):
            # the gradient, and the module's own copy of the targets, in the same pass
            loss, self._grad, p2, kept, delta, pw = F._pointwise_loss_grad(
                self.kind, pred, y, self.reduction, self.delta, self.pos_weight, self._backend,
                keep=lambda t2: _kept_destination(t2, y, prev))
        else:
            loss, p2, t2, delta, pw = F.pointwise_loss(self.kind, pred, y, reduction=self.reduction,
                                                       delta=self.delta, pos_weight=self.pos_weight,
                                                       backend=self._backend)
            kept = _kept_targets(t2, y, prev)
        self._cache = (np.shape(pred), p2, kept, delta, pw)
        return loss

    def backward(self, dout=None):
        shape, p2, t2, delta, pw = self._need(self._cache)
        factor = None if dout is None else V.real("dout", dout)
        d, self._grad = self._grad, None  # the caller owns it from here
        if d is None:
            scale = 1.0 / p2.size if self.reduction == "mean" else 1.0
            if factor is not None:
                scale *= factor
            d = F._pointwise_backward(self.kind, p2, t2, delta, pw, scale, _memory.empty(p2.shape, p2.dtype), self._backend)
        elif factor is not None:
            d *= factor
        return d.reshape(shape)

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class MSELoss(_PointwiseLoss):
    """Mean squared error ``(pred - y)^2``."""
    kind = "mse"


class L1Loss(_PointwiseLoss):
    """Mean absolute error ``|pred - y|`` (gradient sign(pred - y), 0 at 0)."""
    kind = "l1"


class HuberLoss(_PointwiseLoss):
    """``0.5 d^2`` where ``|d| <= delta``, else ``delta (|d| - 0.5 delta)``, d = pred - y."""
    kind = "huber"

    def __init__(self, delta: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.delta = V.real("delta", delta, lo=0, lo_open=True)

    def __repr__(self):
        return f"HuberLoss(delta={self.delta}, reduction={self.reduction!r})"


class BCEWithLogitsLoss(_PointwiseLoss):
    """Binary cross-entropy of ``sigmoid(logits)``, computed from the logits
    (stable): one output per label, targets in [0, 1] of the logits' shape
    (binary: ``(N, 1)``; multi-label: ``(N, C)``). ``pos_weight: (C,)``
    weighs the positive term of each column, as in PyTorch. Accuracy is
    ``logit > 0`` against ``y >= 0.5``; probabilities:
    ``fastnn.train.predict_proba(model, X, kind="sigmoid")``. The training
    forward's gradient costs no second exp (exp(-|x|) once per element)."""
    kind = "bce_logits"
    classification = True
    binary = True  # the "accuracy" metric thresholds each output
    target_kind = "binary"

    def __init__(self, pos_weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        if pos_weight is not None:
            pw = np.array(pos_weight, dtype=np.float64, ndmin=1)
            if pw.ndim != 1 or not np.isfinite(pw).all() or (pw < 0).any():
                raise ValueError(f"pos_weight must be a 1-D array of finite non-negative weights, got {pos_weight!r}")
            pos_weight = pw
        self.pos_weight = pos_weight

    def __repr__(self):
        pw = "" if self.pos_weight is None else f"pos_weight={self.pos_weight.tolist()}, "
        return f"BCEWithLogitsLoss({pw}reduction={self.reduction!r})"
