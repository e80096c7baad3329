"""Optimizers: SGD (momentum, Nesterov), Adam, AdamW, with parameter groups.

The classes here own the state (moments, step count) and the
hyperparameters; the update itself is one multi-tensor kernel call per
dtype for all parameters, ``fastnn.kernels.optim.multi_*_update`` (numba) or
``fastnn.reference.optim`` (NumPy), chosen by ``backend`` as everywhere else.
The state is allocated once, in ``__init__``; ``step()`` computes the
step-dependent scalars (bias corrections) in Python, per group.

Usage (the seed's)::

    optimizer = Adam(model.parameters(), lr=0.001)
    ...
    model.backward(loss_fn.backward())
    optimizer.step()

Parameter groups, as in PyTorch: pass dicts instead of parameters, each with
``"params"`` and any hyperparameters that differ from the defaults::

    optimizer = AdamW([{"params": body.parameters()},
                       {"params": head.parameters(), "lr": 1e-2, "weight_decay": 0.0}],
                      lr=1e-3)
    optimizer.param_groups[1]["lr"] = 5e-3   # takes effect at the next step()

``optimizer.lr`` (and ``weight_decay``, ``betas``, ...) reads the first
group's value; assigning it sets every group. ``optimizer.params`` is the
flat list of all parameters, in group order; ``state_dict()`` is PyTorch's
format (state keyed by that order's index, groups listing the indices).

``backward`` overwrites the gradients in fastnn, so ``zero_grad()`` is only
needed for a parameter that got no backward since its last step.

Numerics: gradients and optimizer state below the dtype's smallest normal
number (1.2e-38 in float32) are flushed to zero by the updates, so that
decaying moments never fall into the slow subnormal range (see
``fastnn.kernels.optim``).

Regularisation and clipping helpers live in ``fastnn.regularization`` and
are re-exported here.
"""

from __future__ import annotations

import math

import numpy as np

from . import _config
from . import _validate as V
from ._memory import zeros_at_same_page_offset
from . import functional as F
from .kernels import optim as K
from .nn import Parameter
from .reference import optim as R
from .regularization import add_l2_grad, clip_grad_norm, clip_grad_value, l2_grad, l2_loss

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW",
    "l2_loss", "l2_grad", "add_l2_grad", "clip_grad_value", "clip_grad_norm",
]

_HINT = " (pass model.parameters())"


def _check_param_list(params, where: str) -> list:
    """``params`` (an iterable of Parameters) as a list."""
    if isinstance(params, np.ndarray) or isinstance(params, (str, bytes, dict)):
        raise TypeError(f"{where} must be an iterable of fastnn.nn.Parameter, got "
                        f"{type(params).__name__}{_HINT}")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{where} must be an iterable of fastnn.nn.Parameter, got "
                        f"{type(params).__name__}{_HINT}") from None
    if not params:
        raise TypeError(f"{where} is empty: the optimizer has nothing to update{_HINT}")
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{where}[{i}] must be a fastnn.nn.Parameter, got "
                            f"{type(p).__name__}{_HINT}")
        if p.dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"{where}[{i}] must be float32 or float64, got {p.dtype}")
        if not p.flags.c_contiguous or not p.flags.writeable:
            raise ValueError(f"{where}[{i}] must be a C-contiguous, writeable Parameter")
        _check_grad(f"{where}[{i}]", p)
    return params


def _check_grad(where, p):
    g = p.grad
    if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(f"{where}.grad must be an array of the parameter's shape {p.shape} "
                         f"and dtype {p.dtype}, got "
                         + (type(g).__name__ if not isinstance(g, np.ndarray)
                            else f"shape {g.shape}, dtype {g.dtype}"))
    if not g.flags.c_contiguous or not g.flags.writeable:
        raise ValueError(f"{where}.grad must be C-contiguous and writeable")


def _check_state(i, opt):
    """opt.state[i]'s arrays as the kernels read and write them: the
    parameter's shape and dtype, C-contiguous, writeable (they may have been
    replaced since they were made or loaded)."""
    p = opt.params[i]
    for name in opt._state_names:
        a = opt.state[i].get(name)
        if a is None:
            continue
        if (not isinstance(a, np.ndarray) or a.shape != p.shape or a.dtype != p.dtype
                or not a.flags.c_contiguous or not a.flags.writeable):
            got = (type(a).__name__ if not isinstance(a, np.ndarray)
                   else f"shape {a.shape}, dtype {a.dtype}")
            raise ValueError(f"state[{i}][{name!r}] must be a writeable C-contiguous array of "
                             f"params[{i}]'s shape {p.shape} and dtype {p.dtype}, got {got}")


def _flat(a: np.ndarray) -> np.ndarray:
    """A plain 1-D view (numba dispatch on ndarray subclasses is slow)."""
    return a.view(np.ndarray).reshape(-1)


def _positive(name, value):
    return V.real(name, value, lo=0, lo_open=True)


def _nonneg(name, value):
    return V.real(name, value, lo=0)


def _betas(name, betas):
    if isinstance(betas, np.ndarray):
        betas = tuple(betas.tolist()) if betas.ndim == 1 else betas
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {betas!r}")
    b1 = V.real(f"{name}[0]", betas[0], lo=0, hi=1, hi_open=True)
    b2 = V.real(f"{name}[1]", betas[1], lo=0, hi=1, hi_open=True)
    return (b1, b2)


def _flag(name, value):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _hyper_name(g, name):
    return name if g is None else f"param_groups[{g}][{name!r}]"


def _indices(name, value) -> list:
    """A saved group's parameter indices as a list of ints."""
    try:
        a = np.asarray(value)
    except ValueError:  # ragged
        a = None
    if a is None or a.ndim > 1 or a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a list of parameter indices, got {value!r}")
    return [int(i) for i in a.reshape(-1)]


def _step_count(value):
    """A saved step count as an int, or None when it is not a whole number >= 0."""
    try:
        a = np.asarray(value)
    except ValueError:  # ragged
        return None
    if a.ndim != 0 or a.dtype.kind not in "iuf":
        return None
    t = a.item()
    if a.dtype.kind == "f" and not (math.isfinite(t) and t == int(t)) or t < 0:
        return None
    return int(t)


# Tensors per multi-tensor kernel call; a dtype with more takes several calls.
# Calls get tuples padded to a power of two (at least 8) so that numba
# compiles a few tuple lengths, not one per model.
_MAX_TENSORS = 64
_MIN_TENSORS = 8


class _Bucket:
    """The flat views of the parameters of one dtype that one multi-tensor
    kernel call updates (at most ``_MAX_TENSORS``), padded with empty arrays."""

    def __init__(self, indices, opt):
        self.indices = indices
        self.dtype = opt.params[indices[0]].dtype
        n = len(indices)
        self.padded = max(_MIN_TENSORS, 1 << (n - 1).bit_length())
        self.empty = np.empty(0, self.dtype)
        pad = [self.empty] * (self.padded - n)
        self.params = tuple([_flat(opt.params[i]) for i in indices] + pad)
        # .grad may have been replaced since the last check: the kernel reads
        # each grad for its parameter's size, without bounds checks
        for i in indices:
            _check_grad(f"params[{i}]", opt.params[i])
            _check_state(i, opt)
        self.grad_sources = [opt.params[i].grad for i in indices]
        self.grads = tuple([_flat(g) for g in self.grad_sources] + pad)
        self.states = tuple(
            tuple([_flat(opt.state[i][name]) if name in opt.state[i] else self.empty
                   for i in indices] + pad)
            for name in opt._state_names)
        self.group_of = np.array([opt._group_of[i] for i in indices] + [0] * (self.padded - n),
                                 dtype=np.int64)
        sizes = [opt.params[i].size for i in indices]
        self.chunks = K.chunk_table(sizes)
        self.size = sum(sizes)

    def refresh_grads(self, opt):
        """Re-make the gradient views of parameters whose ``.grad`` was replaced."""
        changed = False
        for k, i in enumerate(self.indices):
            p = opt.params[i]
            if p.grad is not self.grad_sources[k]:
                _check_grad(f"params[{i}]", p)
                self.grad_sources[k] = p.grad
                changed = True
        if changed:
            self.grads = tuple([_flat(g) for g in self.grad_sources]
                               + [self.empty] * (self.padded - len(self.indices)))


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, ``state_dict``.

    Subclasses declare ``_checks`` (hyperparameter name -> validator; the
    names are the keys of each group), ``_state_names`` (per-parameter state
    arrays, zeros of the parameter's shape and dtype), ``_hyper_row`` (a
    group's row of the kernel's hyperparameter table) and ``_update``.
    """

    _checks: dict = {}
    _state_names: tuple = ()
    _nonneg_state: tuple = ()  # state a load must find >= 0 (its square root is taken)
    _table_width = 1
    # Units of kernel work per parameter element (``Kernel``'s ``work=``): an
    # update touches several arrays per element, so its parallel build pays
    # off at fewer elements than an activation's.
    UPDATE_WORK = 1

    def __init__(self, params, defaults: dict, backend=None):
        if backend is not None:
            F._check_backend(backend)
        self.backend = backend
        self.defaults = self._check_hyper(defaults, None)
        self.step_count = 0  # step() calls (since the latest load_state_dict)
        self._group_steps = []  # steps taken by each group's parameters (Adam's t)
        self.params, self.state, self.param_groups = [], [], []
        self._group_of = []
        self._seen = []
        if isinstance(params, np.ndarray) or isinstance(params, (str, bytes, dict)):
            raise TypeError(f"params must be an iterable of fastnn.nn.Parameter or of dicts, got "
                            f"{type(params).__name__}{_HINT}")
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"params must be an iterable of fastnn.nn.Parameter or of dicts, got "
                            f"{type(params).__name__}{_HINT}") from None
        if items and all(isinstance(g, dict) for g in items):
            for group in items:
                self.add_param_group(group)
        elif any(isinstance(g, dict) for g in items):
            raise TypeError("params must be all Parameters or all dicts (parameter groups), "
                            "not a mix")
        else:
            self._add_group({"params": items}, "params")

    # -- groups
    def _check_hyper(self, values: dict, g) -> dict:
        """Validated hyperparameters (every key of ``_checks``)."""
        out = {name: check(_hyper_name(g, name), values[name]) for name, check in self._checks.items()}
        self._check_combination(out, g)
        return out

    def _check_combination(self, values: dict, g) -> None:
        pass

    def add_param_group(self, group: dict) -> None:
        """Add a group ``{"params": [...], <hyperparameter>: value, ...}``;
        missing hyperparameters take the optimizer's defaults. Its
        parameters start at step 1 (Adam's bias corrections), as in PyTorch."""
        self._add_group(group, f"param_groups[{len(self.param_groups)}]['params']")

    def _add_group(self, group, params_name):
        g = len(self.param_groups)
        where = f"param_groups[{g}]"
        if not isinstance(group, dict):
            raise TypeError(f"{where} must be a dict with 'params', got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"{where} has no 'params' entry")
        unknown = sorted(set(group) - set(self._checks) - {"params"}, key=str)
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; {type(self).__name__} groups take "
                             f"'params' and {sorted(self._checks)}")
        plist = _check_param_list(group["params"], params_name)
        owner = {id(p): self._group_of[k] for k, p in enumerate(self.params)}
        seen = set()
        for i, p in enumerate(plist):
            if id(p) in seen:
                raise ValueError(f"{params_name}[{i}] appears more than once in params (one Parameter "
                                 f"in two places, e.g. weights shared by two modules: not supported, "
                                 f"each module's backward overwrites the gradient)")
            if id(p) in owner:
                raise ValueError(f"{params_name}[{i}] is already in param_groups[{owner[id(p)]}]: "
                                 f"a parameter may be in one group only")
            seen.add(id(p))
        values = self._check_hyper({**self.defaults, **{k: v for k, v in group.items() if k != "params"}},
                                   None if len(group) == 1 else g)
        new = {"params": plist, **values}
        self.param_groups.append(new)
        self._group_steps.append(0)
        self._seen.append(None)
        for p in plist:
            self._group_of.append(g)
            self.params.append(p)
            self.state.append(self._new_state(p, new))
        self._buckets = None
        self._table = np.zeros((len(self.param_groups), self._table_width), dtype=np.float64)

    def _new_state(self, p, group) -> dict:
        return {name: zeros_at_same_page_offset(p) for name in self._state_names}

    def _sync_groups(self) -> None:
        """Validate groups whose hyperparameters changed since the last step."""
        for g, group in enumerate(self.param_groups):
            key = tuple(group.get(name) for name in self._checks)
            if key != self._seen[g]:
                missing = [name for name in self._checks if name not in group]
                if missing:
                    raise ValueError(f"param_groups[{g}] is missing {missing}")
                group.update(self._check_hyper(group, g))
                self._on_group_change(g, group)
                self._seen[g] = tuple(group[name] for name in self._checks)

    def _on_group_change(self, g, group) -> None:
        pass

    def _views(self):
        """The per-dtype buckets of flat views, with fresh gradient views."""
        if self._buckets is None:
            by_dtype = {}
            for i, p in enumerate(self.params):
                by_dtype.setdefault(p.dtype, []).append(i)
            self._buckets = [_Bucket(idx[k:k + _MAX_TENSORS], self)
                             for idx in by_dtype.values() for k in range(0, len(idx), _MAX_TENSORS)]
        for b in self._buckets:
            b.refresh_grads(self)
        return self._buckets

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero (in place)."""
        for i, p in enumerate(self.params):
            if p.grad is not None:
                _check_grad(f"params[{i}]", p)
                p.grad.fill(0)

    def step(self) -> None:
        """One update of every parameter from its ``.grad``, with each
        group's current hyperparameters."""
        self._sync_groups()
        buckets = self._views()
        self.step_count += 1
        steps = self._group_steps
        for g, group in enumerate(self.param_groups):
            steps[g] += 1
            self._table[g] = self._hyper_row(group, steps[g])
        with _config.between_products():  # right after a backward's products
            self._update(buckets, self._table, F._numba(self.backend))

    def _hyper_row(self, group, t) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update(self, buckets, table, numba_) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- hyperparameters of all groups at once
    def _get_all(self, name):
        return self.param_groups[0][name]

    def _set_all(self, name, value):
        value = self._checks[name](name, value)
        for g, group in enumerate(self.param_groups):
            self._check_combination({**{k: group[k] for k in self._checks}, name: value}, g)
        for group in self.param_groups:
            group[name] = value

    @property
    def lr(self) -> float:
        """The first group's lr; assigning sets the lr of every group."""
        return self._get_all("lr")

    @lr.setter
    def lr(self, value) -> None:
        self._set_all("lr", value)

    @property
    def weight_decay(self) -> float:
        """The first group's weight decay; assigning sets every group's."""
        return self._get_all("weight_decay")

    @weight_decay.setter
    def weight_decay(self, value) -> None:
        self._set_all("weight_decay", value)

    # -- state
    def state_dict(self) -> dict:
        """PyTorch-shaped state (copies)::

            {"state": {i: {"step": int, <name>: array, ...}},
             "param_groups": [{<hyperparameters>, "params": [0, 1, ...]}, ...]}

        ``i`` indexes ``self.params`` (all groups, in order).
        """
        self._sync_groups()
        state = {}
        for i, st in enumerate(self.state):
            entry = {"step": self._group_steps[self._group_of[i]]}
            entry.update({name: a.copy() for name, a in st.items()})
            state[i] = entry
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            out = {k: v for k, v in group.items() if k != "params"}
            out["params"] = list(range(start, start + n))
            groups.append(out)
            start += n
        return {"state": state, "param_groups": groups}

    def _parse_state_dict(self, state_dict):
        """Check ``state_dict`` against this optimizer; return (steps per
        group, arrays, groups) ready to apply. Every difference is listed in the error."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"state_dict must be a dict with 'state' and 'param_groups' "
                             f"(from {name}.state_dict())")
        groups = state_dict["param_groups"]
        if isinstance(groups, dict):  # as flattened by a checkpoint: {0: {...}}
            groups = [groups[k] for k in sorted(groups)]
        state = state_dict["state"]
        if not isinstance(groups, (list, tuple)):
            raise ValueError(f"state_dict['param_groups'] must be a list of dicts (from "
                             f"{name}.state_dict()), got {type(groups).__name__}")
        if not isinstance(state, dict):
            raise ValueError(f"state_dict['state'] must be a dict (from {name}.state_dict()), "
                             f"got {type(state).__name__}")
        for key, items in (("param_groups", enumerate(groups)), ("state", state.items())):
            for k, v in items:
                if not isinstance(v, dict):
                    raise ValueError(f"state_dict[{key!r}][{k!r}] must be a dict, got {type(v).__name__}")
        groups = [dict(gr) for gr in groups]
        indexed = {}
        for k, v in state.items():
            try:
                indexed[int(k)] = v
            except (TypeError, ValueError):
                raise ValueError(f"state_dict['state'] must be keyed by parameter index, "
                                 f"got key {k!r}") from None
        state = indexed
        problems = []
        n = len(self.params)
        ids = [_indices(f"state_dict['param_groups'][{g}]['params']", gr.get("params", []))
               for g, gr in enumerate(groups)]
        total = sum(len(x) for x in ids)
        if total != n:
            problems.append(f"the state is for {total} parameters, the optimizer has {n}")
        if len(groups) != len(self.param_groups):
            problems.append(f"the state has {len(groups)} param groups, the optimizer has "
                            f"{len(self.param_groups)}")
        else:
            start = 0
            for g, (gids, mine) in enumerate(zip(ids, self.param_groups)):
                want = list(range(start, start + len(mine["params"])))
                start += len(mine["params"])
                if gids != want and total == n:
                    problems.append(f"param group {g} holds parameters {gids} in the state, "
                                    f"{want} in the optimizer")
        new_groups = []
        for g, gr in enumerate(groups):
            missing = [h for h in self._checks if h not in gr]
            if missing:
                problems.append(f"missing hyperparameters {missing} in param group {g} "
                                f"(was it saved from {name}?)")
                continue
            try:
                values = self._check_hyper(gr, g)
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
                continue
            extra = {k: v for k, v in gr.items() if k not in self._checks and k != "params"}
            new_groups.append({**extra, **values})
        steps, arrays = [set() for _ in self.param_groups], []
        for i, p in enumerate(self.params):
            st = state.get(i)
            if st is None:
                if self._required_state(i):
                    problems.append(f"no state for parameter {i}")
                arrays.append({})
                continue
            if "step" in st:
                t = _step_count(st["step"])
                if t is None:
                    problems.append(f"parameter {i}: step must be a non-negative integer, "
                                    f"got {st['step']!r}")
                else:
                    steps[self._group_of[i]].add(t)
            entry = {}
            for sname in self._state_names:
                if sname not in st:
                    if self._required_state(i):
                        problems.append(f"parameter {i}: missing {sname!r}")
                    continue
                a = np.asarray(st[sname])
                if a.shape != p.shape:
                    problems.append(f"parameter {i} {sname}: shape {a.shape} in the state, {p.shape} in the model")
                elif a.dtype != p.dtype:
                    problems.append(f"parameter {i} {sname}: dtype {a.dtype} in the state, {p.dtype} in the model")
                elif sname in self._nonneg_state and not (a >= 0).all():
                    problems.append(f"parameter {i} {sname}: must be non-negative, has negative "
                                    f"or NaN entries")
                entry[sname] = a
            arrays.append(entry)
        for g, s in enumerate(steps):
            if len(s) > 1:
                problems.append(f"the parameters of group {g} have different step counts {sorted(s)}")
        if problems:
            raise ValueError(f"{name} state does not match: " + "; ".join(problems))
        step = [s.pop() if s else 0 for s in steps]
        return step, arrays, new_groups

    def _required_state(self, i) -> bool:
        return bool(self._state_names)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore step count, state arrays (copied in place) and every
        group's hyperparameters from :meth:`state_dict`'s output."""
        step, arrays, groups = self._parse_state_dict(state_dict)
        for group, values in zip(self.param_groups, groups):
            for k in [k for k in group if k != "params" and k not in values]:
                del group[k]
            group.update(values)
        self._seen = [None] * len(self.param_groups)
        self._sync_groups()
        for st, src, p in zip(self.state, arrays, self.params):
            for sname in self._state_names:
                if sname in src:
                    if sname not in st:
                        st[sname] = zeros_at_same_page_offset(p)
                        self._buckets = None
                    st[sname][...] = src[sname]
                elif sname in st:  # an absent buffer is a zero one (SGD)
                    st[sname][...] = 0
        self._group_steps = step
        self.step_count = max(step)

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items() if k != "params")
        groups = f"{len(self.param_groups)} groups, " if len(self.param_groups) > 1 else ""
        return f"{type(self).__name__}({len(self.params)} parameters, {groups}{hp})"


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum and
    coupled weight decay, as ``torch.optim.SGD`` (``dampening=0``)::

        d   = grad + weight_decay * p
        buf = momentum * buf + d          (buf starts at 0, so the first buf is d)
        p  -= lr * (d + momentum * buf)   nesterov
        p  -= lr * buf                    momentum > 0
        p  -= lr * d                      momentum = 0

    Hyperparameters per group: ``lr``, ``momentum``, ``nesterov``,
    ``weight_decay``. A momentum buffer exists for the parameters of groups
    with momentum > 0 (made when a group's momentum first becomes > 0).
    """

    _checks = {"lr": _nonneg, "momentum": _nonneg, "nesterov": _flag, "weight_decay": _nonneg}
    _state_names = ("momentum_buffer",)
    _table_width = len(K.SGD_HYPER)
    UPDATE_WORK = 3

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, *, backend=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay), backend=backend)

    def _check_combination(self, values, g):
        if values["nesterov"] and values["momentum"] == 0:
            raise ValueError(f"{_hyper_name(g, 'nesterov')}=True needs momentum > 0")

    def _new_state(self, p, group):
        return {"momentum_buffer": zeros_at_same_page_offset(p)} if group["momentum"] > 0 else {}

    def _on_group_change(self, g, group):
        if group["momentum"] > 0:
            for i, k in enumerate(self._group_of):
                if k == g and "momentum_buffer" not in self.state[i]:
                    p = self.params[i]
                    self.state[i]["momentum_buffer"] = zeros_at_same_page_offset(p)
                    self._buckets = None

    def _required_state(self, i):
        return False

    def _hyper_row(self, group, t):
        return (group["lr"], group["momentum"], group["weight_decay"], float(group["nesterov"]))

    def _update(self, buckets, table, numba_):
        for b in buckets:
            if numba_:
                K.multi_sgd_update(b.params, b.states[0], b.grads, b.group_of, table, b.chunks,
                                   work=self.UPDATE_WORK * b.size)
            else:
                R.multi_sgd_update(b.params, b.states[0], b.grads, b.group_of, table, b.chunks)

    @property
    def momentum(self) -> float:
        return self._get_all("momentum")

    @momentum.setter
    def momentum(self, value) -> None:
        self._set_all("momentum", value)

    @property
    def nesterov(self) -> bool:
        return self._get_all("nesterov")

    @nesterov.setter
    def nesterov(self, value) -> None:
        self._set_all("nesterov", value)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with coupled L2 weight decay, as ``torch.optim.Adam``.

    At step t = 1, 2, ... for each parameter p with gradient g::

        d = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * d
        v = beta2 * v + (1 - beta2) * d**2
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    ``m`` and ``v`` start at zero (state names ``exp_avg``, ``exp_avg_sq``).
    Hyperparameters per group: ``lr``, ``betas``, ``eps``, ``weight_decay``.
    """

    _checks = {"lr": _nonneg, "betas": _betas,
               "eps": lambda name, v: V.real(name, v, lo=0, lo_open=True),
               "weight_decay": _nonneg}
    _state_names = ("exp_avg", "exp_avg_sq")
    _nonneg_state = ("exp_avg_sq",)
    _table_width = len(K.ADAM_HYPER)
    UPDATE_WORK = 4
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         backend=backend)

    def _hyper_row(self, group, t):
        lr = group["lr"]
        b1, b2 = group["betas"]
        if self._decoupled:
            l2, scale = 0.0, 1.0 - lr * group["weight_decay"]
        else:
            l2, scale = group["weight_decay"], 1.0
        return (lr / (1.0 - b1 ** t), b1, b2, group["eps"], math.sqrt(1.0 - b2 ** t), l2, scale)

    def _update(self, buckets, table, numba_):
        for b in buckets:
            m, v = b.states
            if numba_:
                K.multi_adam_update(b.params, m, v, b.grads, b.group_of, table, b.chunks,
                                    work=self.UPDATE_WORK * b.size)
            else:
                R.multi_adam_update(b.params, m, v, b.grads, b.group_of, table, b.chunks)

    @property
    def betas(self) -> tuple:
        return self._get_all("betas")

    @betas.setter
    def betas(self, value) -> None:
        self._set_all("betas", value)

    @property
    def eps(self) -> float:
        return self._get_all("eps")

    @eps.setter
    def eps(self, value) -> None:
        self._set_all("eps", value)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as
    ``torch.optim.AdamW``. At step t::

        p *= 1 - lr * weight_decay
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *,
                 backend=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         backend=backend)


from . import lr_scheduler  # noqa: E402,F401  (fastnn.optim.lr_scheduler, PyTorch-shaped)
