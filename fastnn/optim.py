"""Optimizers: SGD (momentum, Nesterov), Adam, AdamW.

The classes here own the state (moments, step count) and the
hyperparameters; the update itself is one fused kernel call per parameter,
``fastnn.kernels.optim`` (numba) or ``fastnn.reference.optim`` (NumPy),
chosen by ``backend`` as everywhere else. The state is allocated once, in
``__init__``; ``step()`` allocates nothing and computes the step-dependent
scalars (bias corrections) in Python.

Usage (the seed's)::

    optimizer = Adam(model.parameters(), lr=0.001)
    ...
    model.backward(loss_fn.backward())
    optimizer.step()

``backward`` overwrites the gradients in fastnn, so ``zero_grad()`` is only
needed for a parameter that got no backward since its last step.

Regularisation and clipping helpers live in ``fastnn.regularization`` and
are re-exported here.
"""

from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from . import functional as F
from .kernels import optim as K
from .nn import Parameter
from .reference import optim as R
from .regularization import add_l2_grad, clip_grad_norm, clip_grad_value, l2_grad, l2_loss

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW",
    "l2_loss", "l2_grad", "add_l2_grad", "clip_grad_value", "clip_grad_norm",
]


def _check_params(params) -> list:
    hint = " (pass model.parameters())"
    if isinstance(params, np.ndarray) or isinstance(params, (str, bytes, dict)):
        raise TypeError(f"params must be an iterable of fastnn.nn.Parameter, got "
                        f"{type(params).__name__}{hint}")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of fastnn.nn.Parameter, got "
                        f"{type(params).__name__}{hint}") from None
    if not params:
        raise TypeError(f"params is empty: the optimizer has nothing to update{hint}")
    seen = set()
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"params[{i}] must be a fastnn.nn.Parameter, got "
                            f"{type(p).__name__}{hint}")
        if p.dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"params[{i}] must be float32 or float64, got {p.dtype}")
        if not p.flags.c_contiguous or not p.flags.writeable:
            raise ValueError(f"params[{i}] must be a C-contiguous, writeable Parameter")
        if id(p) in seen:
            raise ValueError(f"params[{i}] appears more than once in params")
        seen.add(id(p))
        _check_grad(i, p)
    return params


def _check_grad(i, p):
    g = p.grad
    if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(f"params[{i}].grad must be an array of the parameter's shape {p.shape} "
                         f"and dtype {p.dtype}, got "
                         + (type(g).__name__ if not isinstance(g, np.ndarray)
                            else f"shape {g.shape}, dtype {g.dtype}"))
    if not g.flags.c_contiguous:
        raise ValueError(f"params[{i}].grad must be C-contiguous")


def _flat(a: np.ndarray) -> np.ndarray:
    """A plain 1-D view (numba dispatch on ndarray subclasses is slow)."""
    return a.view(np.ndarray).reshape(-1)


def _lr(lr):
    return V.real("lr", lr, lo=0, lo_open=True)


def _nonneg(name, value):
    return V.real(name, value, lo=0)


def _betas(betas):
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1 = V.real("betas[0]", betas[0], lo=0, hi=1, hi_open=True)
    b2 = V.real("betas[1]", betas[1], lo=0, hi=1, hi_open=True)
    return (b1, b2)


class Optimizer:
    """Base class: parameter bookkeeping, ``zero_grad``, ``state_dict``.

    Subclasses declare ``_hyper`` (hyperparameter names, stored in
    ``param_groups[0]``) and ``_state_names`` (per-parameter state arrays,
    allocated as zeros of the parameter's shape and dtype).
    """

    _hyper: tuple = ()
    _state_names: tuple = ()

    def __init__(self, params, backend=None):
        self.params = _check_params(params)
        if backend is not None:
            F._check_backend(backend)
        self.backend = backend
        self.step_count = 0
        self.state = [{name: np.zeros(p.shape, p.dtype) for name in self._state_names}
                      for p in self.params]
        # Flat plain views, built once: (param, flat param, grad source, flat grad, *flat state, n).
        self._views = [
            [p, _flat(p), p.grad, _flat(p.grad)] + [_flat(st[name]) for name in self._state_names]
            + [p.size]
            for p, st in zip(self.params, self.state)
        ]

    def _fresh_views(self):
        """The flat views, re-made for any parameter whose ``.grad`` was replaced."""
        views = self._views
        for i, entry in enumerate(views):
            p = entry[0]
            if p.grad is not entry[2]:
                _check_grad(i, p)
                entry[2] = p.grad
                entry[3] = _flat(p.grad)
        return views

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero (in place)."""
        for p in self.params:
            if p.grad is not None:
                p.grad.fill(0)

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- hyperparameters
    def _hyper_values(self) -> dict:
        return {name: getattr(self, name) for name in self._hyper}

    def _set_hyper(self, values: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _lr(value)

    # -- state
    def state_dict(self) -> dict:
        """PyTorch-shaped state (copies)::

            {"state": {i: {"step": int, <name>: array, ...}},
             "param_groups": [{<hyperparameters>, "params": [0, 1, ...]}]}
        """
        state = {}
        for i, st in enumerate(self.state):
            entry = {"step": self.step_count}
            entry.update({name: st[name].copy() for name in self._state_names})
            state[i] = entry
        group = self._hyper_values()
        group["params"] = list(range(len(self.params)))
        return {"state": state, "param_groups": [group]}

    def _parse_state_dict(self, state_dict):
        """Check ``state_dict`` against this optimizer; return (step, arrays, hyper).
        Every difference is listed in the error."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"state_dict must be a dict with 'state' and 'param_groups' "
                             f"(from {name}.state_dict())")
        groups = state_dict["param_groups"]
        if isinstance(groups, dict):  # as flattened by a checkpoint: {0: {...}}
            groups = [groups[k] for k in sorted(groups)]
        if len(groups) != 1:
            raise ValueError(f"state_dict has {len(groups)} param groups; {name} has 1")
        group = dict(groups[0])
        problems = []
        n = len(self.params)
        ids = [int(i) for i in np.asarray(group.get("params", []), dtype=np.int64).reshape(-1)]
        if ids != list(range(n)):
            problems.append(f"the state is for {len(ids)} parameters, the optimizer has {n}")
        missing = [h for h in self._hyper if h not in group]
        if missing:
            problems.append(f"missing hyperparameters {missing} (was it saved from {name}?)")
        state = {int(k): v for k, v in dict(state_dict["state"]).items()}
        steps, arrays = set(), []
        for i, p in enumerate(self.params):
            st = state.get(i)
            if st is None:
                if self._state_names:
                    problems.append(f"no state for parameter {i}")
                arrays.append({})
                continue
            if "step" in st:
                steps.add(int(np.asarray(st["step"])))
            entry = {}
            for sname in self._state_names:
                if sname not in st:
                    problems.append(f"parameter {i}: missing {sname!r}")
                    continue
                a = np.asarray(st[sname])
                if a.shape != p.shape:
                    problems.append(f"parameter {i} {sname}: shape {a.shape} in the state, {p.shape} in the model")
                elif a.dtype != p.dtype:
                    problems.append(f"parameter {i} {sname}: dtype {a.dtype} in the state, {p.dtype} in the model")
                entry[sname] = a
            arrays.append(entry)
        if len(steps) > 1:
            problems.append(f"parameters have different step counts {sorted(steps)}")
        if problems:
            raise ValueError(f"{name} state does not match: " + "; ".join(problems))
        hyper = {h: group[h] for h in self._hyper}
        step = steps.pop() if steps else 0
        return step, arrays, hyper

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore step count, state arrays (copied in place) and
        hyperparameters from :meth:`state_dict`'s output."""
        step, arrays, hyper = self._parse_state_dict(state_dict)
        self._set_hyper(hyper)
        for st, src in zip(self.state, arrays):
            for sname, a in src.items():
                st[sname][...] = a
        self.step_count = step

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self._hyper_values().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {hp})"


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum and
    coupled weight decay, as ``torch.optim.SGD`` (``dampening=0``)::

        d   = grad + weight_decay * p
        buf = momentum * buf + d          (buf starts at 0, so the first buf is d)
        p  -= lr * (d + momentum * buf)   nesterov
        p  -= lr * buf                    momentum > 0
        p  -= lr * d                      momentum = 0
    """

    _hyper = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, *, backend=None):
        self._set_hyper(dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
        self._state_names = ("momentum_buffer",) if self.momentum > 0 else ()
        super().__init__(params, backend=backend)

    def _set_hyper(self, h):
        lr = _lr(h["lr"])
        momentum = _nonneg("momentum", h["momentum"])
        nesterov = h["nesterov"]
        if isinstance(nesterov, np.ndarray) and nesterov.ndim == 0:
            nesterov = nesterov.item()
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        if "_state_names" in self.__dict__ and bool(self._state_names) != (momentum > 0):
            # The momentum buffers are allocated (or not) once, in __init__.
            raise ValueError(
                "momentum must stay > 0 for an SGD created with momentum" if self._state_names
                else "momentum must stay 0 for an SGD created without momentum (it has no buffers)")
        self._lr, self.momentum, self.nesterov = lr, momentum, bool(nesterov)
        self.weight_decay = _nonneg("weight_decay", h["weight_decay"])

    def step(self) -> None:
        """One update of every parameter from its ``.grad``."""
        self.step_count += 1
        lr, wd = self._lr, self.weight_decay
        numba_ = F._numba(self.backend)
        if self.momentum > 0:
            mu, nesterov = self.momentum, self.nesterov
            if numba_:
                k = K.sgd_momentum_update
                for _, p, _, g, buf, n in self._fresh_views():
                    k(p, buf, g, lr, mu, wd, nesterov, work=3 * n)
            else:
                for _, p, _, g, buf, n in self._fresh_views():
                    R.sgd_momentum_update(p, buf, g, lr, mu, wd, nesterov)
        elif numba_:
            k = K.sgd_update
            for _, p, _, g, n in self._fresh_views():
                k(p, g, lr, wd, work=2 * n)
        else:
            for _, p, _, g, n in self._fresh_views():
                R.sgd_update(p, g, lr, wd)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with coupled L2 weight decay, as ``torch.optim.Adam``.

    At step t = 1, 2, ... for each parameter p with gradient g::

        d = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * d
        v = beta2 * v + (1 - beta2) * d**2
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    ``m`` and ``v`` start at zero (state names ``exp_avg``, ``exp_avg_sq``).
    """

    _hyper = ("lr", "betas", "eps", "weight_decay")
    _state_names = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 backend=None):
        self._set_hyper(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        super().__init__(params, backend=backend)

    def _set_hyper(self, h):
        lr = _lr(h["lr"])
        betas = _betas(tuple(np.asarray(h["betas"]).tolist()) if isinstance(h["betas"], np.ndarray)
                       else h["betas"])
        eps = V.real("eps", h["eps"], lo=0, lo_open=True)
        wd = _nonneg("weight_decay", h["weight_decay"])
        self._lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, wd

    def step(self) -> None:
        """One update of every parameter from its ``.grad``."""
        self.step_count += 1
        t = self.step_count
        lr = self._lr
        b1, b2 = self.betas
        step_size = lr / (1.0 - b1 ** t)
        bc2_sqrt = math.sqrt(1.0 - b2 ** t)
        if self._decoupled:
            l2, scale = 0.0, 1.0 - lr * self.weight_decay
        else:
            l2, scale = self.weight_decay, 1.0
        eps = self.eps
        if F._numba(self.backend):
            k = K.adam_update
            for _, p, _, g, m, v, n in self._fresh_views():
                # work: an update touches several arrays per element, so the
                # parallel build pays off at fewer elements than an activation
                k(p, m, v, g, step_size, b1, b2, eps, bc2_sqrt, l2, scale, work=4 * n)
        else:
            for _, p, _, g, m, v, n in self._fresh_views():
                R.adam_update(p, m, v, g, step_size, b1, b2, eps, bc2_sqrt, l2, scale)


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
