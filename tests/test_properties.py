"""Property-based tests (hypothesis) of the public API's input checks.

Malformed arguments (wrong ndim, shape, dtype, empty, not an array, bad
labels, hyper-parameters out of range) must be refused in Python, before any
kernel runs, with ValueError/TypeError whose message names the argument.
Well-formed but unusual arguments (non-contiguous, read-only, any integer
label dtype, soft targets) must be accepted, give the contiguous result, and
never be written through.

In this process the calls run on the NumPy backend: a missing check then
shows as a wrong exception or message, never as a crash. The same
strategies run on the numba backend in a subprocess
(``test_malformed_inputs_never_crash_numba``), where a missing check could
index out of bounds inside a kernel; a segfault there fails that test
instead of killing the run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import functional as F
from fastnn import nn, optim

# FASTNN_PROPERTY_EXAMPLES=1000 for a longer search than CI's.
SETTINGS = settings(max_examples=int(os.environ.get("FASTNN_PROPERTY_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLOATS = (np.float32, np.float64)
ACTS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu")


# ------------------------------------------------------------ valid calls
#
# Each op: build(rng, dt, n, d, h) -> its valid array arguments, and a spec
# per array argument: (name in messages, axes whose size must match another
# argument, fixed ndim or None, names a mismatch message may use instead).


def _arr(rng, dt, *shape):
    return rng.standard_normal(shape).astype(dt)


def _labels(rng, n, c):
    return rng.integers(0, c, n)


def _build_linear(rng, dt, n, d, h):
    return dict(x=_arr(rng, dt, n, d), W=_arr(rng, dt, d, h), b=_arr(rng, dt, h))


def _build_linear_backward(rng, dt, n, d, h):
    return dict(dy=_arr(rng, dt, n, h), x=_arr(rng, dt, n, d), W=_arr(rng, dt, d, h))


def _build_act(rng, dt, n, d, h):
    return dict(x=_arr(rng, dt, n, d))


def _build_act_backward(rng, dt, n, d, h):
    return dict(dy=_arr(rng, dt, n, d), saved=_arr(rng, dt, n, d))


def _build_xent(rng, dt, n, d, h):
    return dict(logits=_arr(rng, dt, n, d), target=_labels(rng, n, d))


def _build_xent_backward(rng, dt, n, d, h):
    p = np.abs(_arr(rng, dt, n, d)) + dt(0.1)
    return dict(probs=p / p.sum(1, keepdims=True), target=_labels(rng, n, d))


def _build_xent_grad(rng, dt, n, d, h):
    logits = _arr(rng, dt, n, d)
    return dict(logits=logits, rowmax=logits.max(1), rowsum=np.abs(_arr(rng, dt, n)) + dt(1),
                target=_labels(rng, n, d))


def _build_bn(rng, dt, n, d, h):
    return dict(x=_arr(rng, dt, max(n, 2), d), gamma=_arr(rng, dt, d), beta=_arr(rng, dt, d),
                running_mean=np.zeros(d, dt), running_var=np.ones(d, dt))


def _build_bn_backward(rng, dt, n, d, h):
    return dict(dy=_arr(rng, dt, n, d), x=_arr(rng, dt, n, d), mean=_arr(rng, dt, d),
                rstd=np.abs(_arr(rng, dt, d)) + dt(0.5), gamma=_arr(rng, dt, d))


def _build_ln(rng, dt, n, d, h):
    return dict(x=_arr(rng, dt, n, d), gamma=_arr(rng, dt, d), beta=_arr(rng, dt, d))


def _build_ln_backward(rng, dt, n, d, h):
    return dict(dy=_arr(rng, dt, n, d), x=_arr(rng, dt, n, d), mean=_arr(rng, dt, n),
                rstd=np.abs(_arr(rng, dt, n)) + dt(0.5), gamma=_arr(rng, dt, d))


def _build_dropout(rng, dt, n, d, h):
    return dict(x=_arr(rng, dt, n, d))


def _build_dropout_backward(rng, dt, n, d, h):
    return dict(dy=_arr(rng, dt, n, d), mask=(rng.random((n, d)) > 0.5).astype(np.uint8))


# name -> (build, call(args, backend, **hyper), {arg: (msg name, axes, ndim, partners)}, hyper defaults)
OPS = {
    "linear": (
        _build_linear, lambda a, be, **k: F.linear(a["x"], a["W"], a["b"], backend=be),
        {"x": ("x", (1,), 2, ("W",)), "W": ("W", (0, 1), 2, ("x", "b")), "b": ("b", (0,), 1, ("W",))}, {}),
    "linear_backward": (
        _build_linear_backward, lambda a, be, **k: F.linear_backward(a["dy"], a["x"], a["W"], backend=be),
        {"dy": ("dy", (0, 1), 2, ("x", "W")), "x": ("x", (0, 1), 2, ("W", "dy")),
         "W": ("W", (0, 1), 2, ("x", "dy"))}, {}),
    "activation": (
        _build_act, lambda a, be, name="gelu", alpha=0.01: F.activation(name, a["x"], alpha=alpha, backend=be),
        {"x": ("x", (), None, ())}, {"name": "gelu", "alpha": 0.01}),
    "activation_backward": (
        _build_act_backward,
        lambda a, be, name="gelu", alpha=0.01: F.activation_backward(name, a["dy"], a["saved"], alpha=alpha,
                                                                     backend=be),
        {"dy": ("dy", (0, 1), None, ("x", "y", "input")), "saved": ("x", (0, 1), None, ("dy", "y"))},
        {"name": "gelu", "alpha": 0.01}),
    "softmax_xent": (
        _build_xent, lambda a, be, **k: F.softmax_xent(a["logits"], a["target"], backend=be),
        {"logits": ("logits", (0,), 2, ("y",))}, {}),
    "softmax_xent_backward": (
        _build_xent_backward, lambda a, be, **k: F.softmax_xent_backward(a["probs"], a["target"], backend=be),
        {"probs": ("probs", (0,), 2, ("y",))}, {}),
    "softmax_xent_loss": (
        _build_xent, lambda a, be, **k: F.softmax_xent_loss(a["logits"], a["target"], backend=be),
        {"logits": ("logits", (0,), 2, ("y",))}, {}),
    "softmax_xent_grad": (
        _build_xent_grad,
        lambda a, be, **k: F.softmax_xent_grad(a["logits"], (a["rowmax"], a["rowsum"]), a["target"], backend=be),
        {"logits": ("logits", (0,), 2, ("y", "rowmax", "rowsum")), "rowmax": ("rowmax", (0,), 1, ("logits",)),
         "rowsum": ("rowsum", (0,), 1, ("logits",))}, {}),
    "batchnorm": (
        _build_bn,
        lambda a, be, eps=1e-5, momentum=0.1: F.batchnorm(
            a["x"], a["gamma"], a["beta"], eps=eps, momentum=momentum, running_mean=a["running_mean"],
            running_var=a["running_var"], backend=be),
        {"x": ("x", (1,), 2, ("gamma", "beta", "running_mean", "running_var")),
         "gamma": ("gamma", (0,), 1, ("x", "beta")), "beta": ("beta", (0,), 1, ("x", "gamma")),
         "running_mean": ("running_mean", (0,), 1, ()), "running_var": ("running_var", (0,), 1, ())},
        {"eps": 1e-5, "momentum": 0.1}),
    "batchnorm_backward": (
        _build_bn_backward,
        lambda a, be, **k: F.batchnorm_backward(a["dy"], a["x"], a["mean"], a["rstd"], a["gamma"], backend=be),
        {"dy": ("dy", (0, 1), 2, ("x",)), "x": ("x", (0, 1), 2, ("dy", "mean", "rstd", "gamma")),
         "mean": ("mean", (0,), 1, ("x",)), "rstd": ("rstd", (0,), 1, ("x",)),
         "gamma": ("gamma", (0,), 1, ("x",))}, {}),
    "layernorm": (
        _build_ln, lambda a, be, eps=1e-5: F.layernorm(a["x"], a["gamma"], a["beta"], eps=eps, backend=be),
        {"x": ("x", (1,), None, ("gamma", "beta")), "gamma": ("gamma", (0,), 1, ("x", "beta")),
         "beta": ("beta", (0,), 1, ("x", "gamma"))}, {"eps": 1e-5}),
    "layernorm_backward": (
        _build_ln_backward,
        lambda a, be, **k: F.layernorm_backward(a["dy"], a["x"], a["mean"], a["rstd"], a["gamma"], backend=be),
        {"dy": ("dy", (0, 1), None, ("x",)), "x": ("x", (0, 1), None, ("dy", "mean", "rstd", "gamma")),
         "mean": ("mean", (0,), None, ("x",)), "rstd": ("rstd", (0,), None, ("x",)),
         "gamma": ("gamma", (0,), 1, ("x",))}, {}),
    "dropout": (
        _build_dropout,
        lambda a, be, p=0.3, seed=1, step=1: F.dropout(a["x"], p, seed=seed, step=step, backend=be),
        {"x": ("x", (), None, ())}, {"p": 0.3, "seed": 1, "step": 1}),
    "dropout_backward": (
        _build_dropout_backward, lambda a, be, p=0.3: F.dropout_backward(a["dy"], a["mask"], p, backend=be),
        {"dy": ("dy", (0, 1), None, ("mask",)), "mask": ("mask", (0, 1), None, ("dy",))}, {"p": 0.3}),
}

# The only float argument of its op: the other float dtype is valid there.
SETS_DTYPE = {("activation", "x"), ("dropout", "x"), ("dropout_backward", "dy"),
              ("softmax_xent", "logits"), ("softmax_xent_backward", "probs"), ("softmax_xent_loss", "logits")}
# None is a valid value of these.
OPTIONAL = {"b", "running_mean", "running_var", "mask"}


@st.composite
def valid_call(draw, ops=tuple(OPS)):
    op = draw(st.sampled_from(ops))
    dt = draw(st.sampled_from(FLOATS))
    n, d, h = (draw(st.integers(1, 6)) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    return op, OPS[op][0](np.random.default_rng(seed), dt, n, d, h)


# ------------------------------------------------------- malformed arrays

CORRUPTIONS = ("int", "bool", "float16", "complex", "other_float", "object", "not_array",
               "scalar", "empty", "ndim", "shape")


def _other_float(dt):
    return np.float64 if dt == np.float32 else np.float32


@st.composite
def malformed_call(draw):
    """A valid call with one array argument broken. Returns (op, args,
    hyper, what was done, names the error message may use)."""
    op, args = draw(valid_call())
    spec = OPS[op][2]
    arg = draw(st.sampled_from(sorted(spec)))
    name, axes, ndim, partners = spec[arg]
    a = args[arg]
    choices = [c for c in CORRUPTIONS
               if not (c == "shape" and not axes)
               and not (c == "ndim" and ndim is None)
               and not (c == "other_float" and (op, arg) in SETS_DTYPE)]
    how = draw(st.sampled_from(choices))
    names = (name,)
    if how == "int":
        a = a.astype(draw(st.sampled_from([np.int8, np.int32, np.int64, np.uint16])))
    elif how == "bool":
        a = a > 0
    elif how == "float16":
        a = a.astype(np.float16)
    elif how == "complex":
        a = a.astype(np.complex64)
    elif how == "other_float":
        a = a.astype(_other_float(a.dtype))
        names = (name,) + partners  # "x has dtype float32 but float64 is expected"
    elif how == "object":
        a = a.astype(object)
    elif how == "not_array":
        a = draw(st.sampled_from(([] if arg in OPTIONAL else [None]) + ["abc", {"a": 1}, object(), 3 + 4j]))
    elif how == "scalar":
        a = draw(st.sampled_from([a.reshape(-1)[0], np.asarray(a.reshape(-1)[0]), 1.0]))
    elif how == "empty":
        shape = list(a.shape)
        shape[draw(st.integers(0, a.ndim - 1))] = 0
        a = np.empty(shape, a.dtype)
    elif how == "ndim":
        a = a[..., None] if draw(st.booleans()) or a.ndim == 1 else a[0]
        names = (name,) + partners
    elif how == "shape":
        shape = list(a.shape)
        ax = draw(st.sampled_from([ax for ax in axes if ax < a.ndim]))
        shape[ax] = shape[ax] + 1 if shape[ax] == 1 or draw(st.booleans()) else shape[ax] - 1
        a = np.ones(shape, a.dtype)
        names = (name,) + partners
    args = dict(args, **{arg: a})
    return op, args, {}, f"{arg}: {how}", names


BAD_REALS = [float("nan"), float("inf"), -float("inf"), "0.1", None, True, 1 + 0j, [0.1]]
BAD_HYPER = {
    ("dropout", "p"): BAD_REALS + [-0.1, 1.0, 1.5],
    ("dropout_backward", "p"): BAD_REALS + [-1e-9, 1.0, 2.0],
    ("dropout", "seed"): [None, 1.5, "3", True],
    ("dropout", "step"): [None, 2.5, "1"],
    ("batchnorm", "eps"): BAD_REALS + [0, 0.0, -1e-5],
    ("batchnorm", "momentum"): BAD_REALS + [-0.1, 1.0001, 2],
    ("layernorm", "eps"): BAD_REALS + [0, -1e-3],
    ("activation", "name"): ["ReLU", "swish", "", None, 3],
    ("activation", "alpha"): BAD_REALS,
}


@st.composite
def malformed_hyper(draw):
    op, arg = draw(st.sampled_from(sorted(BAD_HYPER, key=str)))
    _, args = draw(valid_call((op,)))
    value = draw(st.sampled_from(BAD_HYPER[op, arg]))
    hyper = dict(OPS[op][3])
    hyper[arg] = value
    if arg == "alpha":
        hyper["name"] = "leaky_relu"
    names = ("activation",) if arg == "name" else (arg,)
    return op, args, hyper, f"{arg}={value!r}", names


def _names_in(msg, names):
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in names)


def check_rejected(case, backend):
    """The call raises ValueError/TypeError naming the argument, and leaves
    its valid array arguments as they were."""
    op, args, hyper, what, names = case
    before = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray) and v.dtype != object}
    try:
        OPS[op][1](args, backend, **hyper)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert _names_in(msg, names), f"{op} ({what}): message names none of {names}: {msg!r}"
    else:
        raise AssertionError(f"{op} ({what}) was accepted")
    for k, v in before.items():
        np.testing.assert_array_equal(args[k], v, err_msg=f"{op} wrote into {k}")


@SETTINGS
@given(malformed_call())
def test_malformed_arrays_are_rejected(case):
    check_rejected(case, "numpy")


@SETTINGS
@given(malformed_hyper())
def test_bad_hyperparameters_are_rejected(case):
    check_rejected(case, "numpy")


# ----------------------------------------------------------------- labels


@st.composite
def bad_labels(draw):
    """(logits, y) where y is not valid for logits: (N, C)."""
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dt = draw(st.sampled_from(FLOATS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = _arr(rng, dt, n, c)
    y = _labels(rng, n, c)
    how = draw(st.sampled_from(["high", "negative", "huge", "float", "bool", "length", "2d_int",
                                "list_high", "none", "string", "targets_sum", "targets_negative",
                                "targets_nan", "targets_shape", "targets_int", "object"]))
    i = draw(st.integers(0, n - 1))
    if how == "high":
        y[i] = c + draw(st.integers(0, 3))
    elif how == "negative":
        y[i] = -draw(st.integers(1, 3))
    elif how == "huge":
        y = y.astype(np.uint64)
        y[i] = np.uint64(2**63 + 5)
    elif how == "float":
        y = y.astype(dt)
    elif how == "bool":
        y = y > 0
    elif how == "length":
        y = _labels(rng, n + draw(st.sampled_from([-1, 1])), c) if n > 1 else _labels(rng, 2, c)
    elif how == "2d_int":
        y = y[:, None]
    elif how == "list_high":
        y = y.tolist()
        y[i] = c
    elif how == "none":
        y = None
    elif how == "string":
        y = "0"
    elif how == "object":
        y = y.astype(object)
    else:
        t = np.eye(c, dtype=dt)[y]
        if how == "targets_sum":
            t[i] *= dt(draw(st.sampled_from([0.0, 0.5, 2.0])))
        elif how == "targets_negative":  # still sums to 1 when c > 1
            t[i] = 0
            t[i, 0] = -1
            t[i, -1] += 2 if c > 1 else 0
        elif how == "targets_nan":
            t[i, 0] = np.nan
        elif how == "targets_shape":
            t = np.full((n, c + 1), 1 / (c + 1), dt)
        elif how == "targets_int":
            t = t.astype(np.int64)
        y = t
    return logits, y, how


@SETTINGS
@given(bad_labels())
def test_bad_labels_are_rejected(case):
    logits, y, how = case
    probs = np.full(logits.shape, 1 / logits.shape[1], logits.dtype)
    for call in (lambda: F.softmax_xent(logits, y, backend="numpy"),
                 lambda: nn.SoftmaxCrossEntropy().forward(logits, y),
                 lambda: F.softmax_xent_backward(probs, y, backend="numpy")):
        with pytest.raises((ValueError, TypeError)) as err:
            with fastnn.use_backend("numpy"):
                call()
        assert _names_in(str(err.value), ("y",)), f"{how}: {err.value}"


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from(FLOATS),
       st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64, "list"]),
       st.integers(0, 2**32 - 1))
def test_any_integer_labels_and_soft_targets_are_accepted(n, c, dt, label_dtype, seed):
    """Valid labels of any integer dtype (or a list) give the int64 result;
    soft targets give the mean cross-entropy and (p - t) / N."""
    rng = np.random.default_rng(seed)
    logits = _arr(rng, dt, n, c)
    y = _labels(rng, n, c)
    want, probs, _ = F.softmax_xent(logits, y, backend="numpy")
    given_y = y.tolist() if label_dtype == "list" else y.astype(label_dtype)
    got, _, t = F.softmax_xent(logits, given_y, backend="numpy")
    assert got == want
    t_soft = rng.dirichlet(np.ones(c), n).astype(dt)
    loss, p, t2 = F.softmax_xent(logits, t_soft, backend="numpy")
    tol = 1e-4 if dt == np.float32 else 1e-10
    ref = -np.mean(np.sum(t_soft * np.log(np.maximum(p, np.finfo(dt).tiny)), axis=1))
    assert abs(loss - ref) <= tol * max(1.0, abs(ref))
    np.testing.assert_allclose(F.softmax_xent_backward(p, t2, backend="numpy"), (p - t_soft) / n,
                               rtol=tol, atol=tol)


# ------------------------------------- non-contiguous and read-only inputs


def _awkward(a, how, rng):
    """``a``'s values in a differently laid out, maybe read-only array."""
    if how == "fortran":
        b = np.asfortranarray(a)
    elif how == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim else a.copy()
        big[..., ::2] = a
        b = big[..., ::2]
    elif how == "reversed":
        b = a[::-1].copy()[::-1]
    else:
        b = a.copy()
    if rng.random() < 0.5 or how == "readonly":
        b.flags.writeable = False
    return b


@SETTINGS
@given(valid_call(), st.sampled_from(["fortran", "strided", "reversed", "readonly"]), st.integers(0, 99))
def test_noncontiguous_and_readonly_inputs(call, how, seed):
    """Same results as contiguous inputs; inputs never written through."""
    op, args = call
    rng = np.random.default_rng(seed)
    if op == "batchnorm":  # running stats are updated in place: they stay writeable
        awkward = {k: (_awkward(v, how, rng) if not k.startswith("running") else v.copy())
                   for k, v in args.items()}
    else:
        awkward = {k: (_awkward(v, how, rng) if isinstance(v, np.ndarray) and v.ndim else v)
                   for k, v in args.items()}
    snapshot = {k: np.array(v, copy=True) for k, v in awkward.items()}
    flags = {k: v.flags.writeable for k, v in awkward.items()}
    call_ = OPS[op][1]
    want = call_({k: np.ascontiguousarray(v).copy() for k, v in args.items()}, "numpy", **OPS[op][3])
    got = call_(awkward, "numpy", **OPS[op][3])
    for w, g in zip(_flatten(want), _flatten(got)):
        np.testing.assert_array_equal(g, w)
    for k, v in awkward.items():
        if not k.startswith("running"):
            np.testing.assert_array_equal(v, snapshot[k], err_msg=f"{op} wrote into {k}")
        assert v.flags.writeable == flags[k]


def _flatten(out):
    if isinstance(out, tuple):
        return [np.asarray(o) for o in out if o is not None]
    return [np.asarray(out)]


# ---------------------------------------------------------------- modules


def _module_cases(rng, dt, n, d):
    """(module, a valid input, kwargs of forward)."""
    return [
        (nn.Linear(d, d + 1, dtype=dt, rng=rng), {}),
        (nn.ReLU(), {}), (nn.LeakyReLU(0.2), {}), (nn.Sigmoid(), {}), (nn.Tanh(), {}),
        (nn.GELU(), {}), (nn.SiLU(), {}),
        (nn.Dropout(0.3, seed=1), {}),
        (nn.BatchNorm(d, dtype=dt), {}),
        (nn.LayerNorm(d, dtype=dt), {}),
        (nn.Sequential([nn.Linear(d, 4, dtype=dt, rng=rng), nn.ReLU(), nn.Linear(4, 3, dtype=dt, rng=rng)]), {}),
    ]


@st.composite
def module_and_bad_input(draw):
    dt = draw(st.sampled_from(FLOATS))
    n, d = draw(st.integers(2, 5)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    i = draw(st.integers(0, len(_module_cases(rng, dt, n, d)) - 1))
    module, _ = _module_cases(rng, dt, n, d)[i]
    elementwise = isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU,
                                      nn.Dropout))
    hows = ["int", "float16", "not_array", "empty", "scalar"]
    if not elementwise:
        hows += ["features", "ndim"]
    if isinstance(module, (nn.Linear, nn.BatchNorm, nn.LayerNorm, nn.Sequential)):
        hows.append("other_float")  # a layer has a dtype; elementwise ones follow x
    how = draw(st.sampled_from(hows))
    x = _arr(rng, dt, n, d)
    if how == "int":
        x = x.astype(np.int64)
    elif how == "float16":
        x = x.astype(np.float16)
    elif how == "not_array":
        x = draw(st.sampled_from([None, "x", {"x": 1}]))
    elif how == "empty":
        x = np.empty((0, d), dt)
    elif how == "scalar":
        x = np.asarray(1.0, dt)
    elif how == "features":
        x = _arr(rng, dt, n, d + 1)
    elif how == "ndim":
        x = x[0] if isinstance(module, (nn.Linear, nn.BatchNorm, nn.Sequential)) else x[:, :, None]
    elif how == "other_float":
        x = x.astype(_other_float(dt))
    if how == "ndim" and isinstance(module, nn.LayerNorm):
        x = _arr(rng, dt, n, d, d + 1)  # LayerNorm takes any ndim: break the last axis
    return module, x, how


@SETTINGS
@given(module_and_bad_input())
def test_module_forward_rejects_bad_input(case):
    module, x, how = case
    module.backend = "numpy"
    with pytest.raises((ValueError, TypeError)) as err:
        module.forward(x)
    assert _names_in(str(err.value), ("x",)), f"{module!r} ({how}): {err.value}"


@st.composite
def module_and_bad_dout(draw):
    dt = draw(st.sampled_from(FLOATS))
    n, d = draw(st.integers(2, 5)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cases = _module_cases(rng, dt, n, d)
    module, _ = cases[draw(st.integers(0, len(cases) - 1))]
    module.backend = "numpy"
    y = module.forward(_arr(rng, dt, n, d), training=True)
    how = draw(st.sampled_from(["int", "not_array", "shape", "empty", "other_float"]))
    if how == "int":
        dout = np.ones(y.shape, np.int64)
    elif how == "not_array":
        # Sequential.backward() without dout is the seed-style loop's call.
        dout = draw(st.sampled_from(([] if isinstance(module, nn.Sequential) else [None]) + ["dout", 1j]))
    elif how == "shape":
        dout = np.ones((y.shape[0], y.shape[1] + 1), dt)
    elif how == "empty":
        dout = np.empty((0,) + y.shape[1:], dt)
    else:
        dout = np.ones(y.shape, _other_float(dt))
    return module, dout, how


@SETTINGS
@given(module_and_bad_dout())
def test_module_backward_rejects_bad_gradient(case):
    """The upstream gradient's checks name it (dout, or dy in functional)."""
    module, dout, how = case
    if isinstance(module, nn.Dropout) and how == "other_float":
        return  # the gradient of an elementwise op may have its own dtype
    with pytest.raises((ValueError, TypeError)) as err:
        module.backward(dout)
    assert _names_in(str(err.value), ("dout", "dy")), f"{module!r} ({how}): {err.value}"


BAD_CTOR = [
    (lambda v: nn.Linear(v, 3), "in_features", [0, -1, 1.5, "3", None, True]),
    (lambda v: nn.Linear(3, v), "out_features", [0, -2, 2.0, None]),
    (lambda v: nn.Linear(3, 3, dtype=v), "dtype", [np.float16, np.int32, "int64", complex]),
    (lambda v: nn.Dropout(v), "p", BAD_REALS + [-0.5, 1.0, 1.2]),
    (lambda v: nn.Dropout(0.5, seed=v), "seed", [1.5, "1", True]),
    (lambda v: nn.LeakyReLU(v), "alpha", BAD_REALS),
    (lambda v: nn.BatchNorm(v), "dim", [0, -3, 2.5]),
    (lambda v: nn.BatchNorm(4, eps=v), "eps", BAD_REALS + [0, -1.0]),
    (lambda v: nn.BatchNorm(4, momentum=v), "momentum", BAD_REALS + [-0.01, 1.01]),
    (lambda v: nn.LayerNorm(4, eps=v), "eps", BAD_REALS + [0.0, -1e-5]),
    (lambda v: optim.SGD(nn.Linear(2, 2).parameters(), lr=v), "lr", BAD_REALS + [-0.1]),
    (lambda v: optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=v), "momentum", BAD_REALS + [-0.9]),
    (lambda v: optim.Adam(nn.Linear(2, 2).parameters(), lr=v), "lr", BAD_REALS + [-1e-3]),
    (lambda v: optim.Adam(nn.Linear(2, 2).parameters(), eps=v), "eps", BAD_REALS + [0.0, -1e-8]),
    (lambda v: optim.Adam(nn.Linear(2, 2).parameters(), betas=v), "betas",
     [(0.9,), (1.0, 0.999), (0.9, -0.1), (0.9, float("nan")), "0.9", None]),
]


@SETTINGS
@given(st.integers(0, len(BAD_CTOR) - 1).flatmap(
    lambda i: st.tuples(st.just(i), st.sampled_from(BAD_CTOR[i][2]))))
def test_constructors_reject_bad_hyperparameters(case):
    i, value = case
    make, name, _ = BAD_CTOR[i]
    with pytest.raises((ValueError, TypeError)) as err:
        make(value)
    assert _names_in(str(err.value), (name,)), f"{name}={value!r}: {err.value}"


# -------------------------------------------------- NaN propagation


@SETTINGS
@given(st.sampled_from(FLOATS), st.sampled_from(ACTS), st.integers(1, 40), st.integers(0, 2**32 - 1),
       st.sampled_from(["numba", "numpy"]))
def test_activations_propagate_nan(dt, name, n, seed, backend):
    """NaN in, NaN out, on both backends and through the fused Linear block
    (a kernel that swallows NaN hides a diverged model from every check)."""
    rng = np.random.default_rng(seed)
    x = _arr(rng, dt, n) * 10
    bad = rng.random(n) < 0.3
    x[bad] = np.nan
    with np.errstate(invalid="ignore"):
        y = F.activation(name, x, backend=backend)
    np.testing.assert_array_equal(np.isnan(y), bad)
    act = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(),
           "gelu": nn.GELU(), "silu": nn.SiLU()}[name]
    lin = nn.Linear(n, n, dtype=dt)
    lin.W[...] = np.eye(n, dtype=dt)
    lin.b[...] = np.where(bad, np.nan, 0)  # NaN enters through the bias: x @ W stays finite
    model = nn.Sequential([lin, act], backend=backend, fuse=True)
    with np.errstate(invalid="ignore"):
        yf = model(np.nan_to_num(x)[None, :])
    np.testing.assert_array_equal(np.isnan(yf[0]), bad)


# ------------------------------------------- numba, in a subprocess

FUZZ_SRC = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from hypothesis import given, settings, HealthCheck
import test_properties as T

run = settings(max_examples={n}, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))
checks = 0

@run
@given(T.malformed_call())
def arrays(case):
    global checks
    T.check_rejected(case, "numba")
    checks += 1

@run
@given(T.malformed_hyper())
def hyper(case):
    T.check_rejected(case, "numba")

@run
@given(T.bad_labels())
def labels(case):
    logits, y, how = case
    probs = np.full(logits.shape, 1 / logits.shape[1], logits.dtype)
    for call in (lambda: T.F.softmax_xent(logits, y, backend="numba"),
                 lambda: T.F.softmax_xent_backward(probs, y, backend="numba")):
        try:
            call()
        except (ValueError, TypeError):
            pass
        else:
            raise AssertionError(how + " accepted")

arrays()
hyper()
labels()
# Nothing was corrupted: a valid forward/backward still matches the reference.
rng = np.random.default_rng(0)
for op, (build, call, _, hyper_defaults) in T.OPS.items():
    args = build(rng, np.float64, 5, 4, 3)
    want = call({{k: v.copy() for k, v in args.items()}}, "numpy", **hyper_defaults)
    got = call({{k: v.copy() for k, v in args.items()}}, "numba", **hyper_defaults)
    for w, g in zip(T._flatten(want), T._flatten(got)):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=op)
print("fuzzed", checks)
"""


def test_malformed_inputs_never_crash_numba(tmp_path):
    """The strategies above, on the numba backend, in a child process that
    must exit 0: a check missing before a kernel fails here (a wrong error,
    or a segfault) without taking the test run down."""
    tests = str(Path(__file__).resolve().parent)
    script = tmp_path / "fuzz.py"
    script.write_text(textwrap.dedent(FUZZ_SRC.format(tests=tests, n=3 * SETTINGS.max_examples)))
    env = dict(os.environ)
    # The fastnn this process imported, not whichever the child would find.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fastnn.__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\n--- stdout\n{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}")
    assert "fuzzed" in proc.stdout
