"""Shared helpers for the kernel, module and validation tests.

Imported as ``from _helpers import ...``: a plain module, because
``from conftest import`` would pick up benchmarks/conftest.py when both
directories are collected in one run.

* ``run_both`` runs the numba side and the NumPy side of an op on copies of
  the same seeded inputs and compares every output separately, with a
  tolerance chosen by dtype; it also checks that neither side wrote into its
  inputs.
* ``numeric_grad`` / ``assert_grad_close`` are a central-difference gradient
  checker (float64), so that the references are tested against the math and
  not only against the kernels.
"""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest

DTYPES = (np.float32, np.float64)
DTYPE_IDS = ("f32", "f64")
# N=1, odd widths, an MNIST-sized layer.
SHAPES = ((1, 5), (3, 7), (5, 33), (64, 784))
BIG = (1024, 1024)

# |actual - desired| <= atol * max|desired| + rtol * |desired|: the scale
# term keeps cancellation near zero from failing large-magnitude outputs.
TOLERANCES = {
    np.dtype(np.float32): (2e-4, 2e-5),
    np.dtype(np.float64): (1e-9, 1e-11),
}


def subnormal_count(a) -> int:
    """How many entries of a float array are subnormal (non-zero, below the
    smallest normal number of its dtype)."""
    a = np.asarray(a)
    return int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


def assert_close_up_to_flush(actual, desired, name, factor=1000.0):
    """``actual`` from a kernel that flushes subnormals to zero (operands and
    results, intermediate ones included), ``desired`` from IEEE arithmetic:
    the dtype's tolerance plus ``factor`` smallest normals, since a flushed
    intermediate loses up to the smallest normal times the factors applied
    after it (the activations' inputs here stay below 1000 in magnitude)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert subnormal_count(actual) == 0, f"{name} holds {subnormal_count(actual)} subnormals"
    rtol, atol = TOLERANCES[desired.dtype]
    mag = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol,
                               atol=atol * max(mag, 1.0) + factor * float(np.finfo(desired.dtype).tiny),
                               err_msg=f"{name} differs")


def assert_ieee_subnormals_here():
    """Code outside fastnn's flushing kernels still computes IEEE subnormals:
    NumPy on this thread, and a numba parallel loop on the pool's threads."""
    tiny = np.finfo(np.float32).tiny
    half = np.float32(tiny) * np.float32(0.5)
    assert half != 0 and half == np.float32(tiny / 2), "the calling thread flushes subnormals"
    assert np.array([tiny], np.float32)[0] / np.float32(4) != 0
    x = np.full(64, tiny, np.float32)
    assert np.all(_halve_in_parallel(x) == np.float32(tiny / 2)), "numba's pool threads flush subnormals"


def _halve_in_parallel(x):
    import numba

    global _halve_compiled
    if _halve_compiled is None:
        @numba.njit(parallel=True)
        def halve(x):
            out = np.empty_like(x)
            for i in numba.prange(x.shape[0]):
                out[i] = x[i] * np.float32(0.5)
            return out
        _halve_compiled = halve
    return _halve_compiled(x)


_halve_compiled = None


def subnormal_inputs(dtype, n, key):
    """x and dy on which IEEE arithmetic gives GELU and SiLU subnormal values
    and gradients: units saturated just above exp's smallest normal result,
    subnormal inputs, and subnormal entries in a small gradient."""
    rng = rng_for("act-subnormal", np.dtype(dtype).name, key)
    tiny = np.finfo(dtype).tiny
    lo = float(np.log(tiny))  # exp(lo) is the smallest normal number
    x = randn(rng, n, dtype, 3.0)
    x[::5] = rng.uniform(lo + 0.5, lo + 8.0, x[::5].size)
    x[1::7] = tiny * rng.uniform(-1, 1, x[1::7].size)
    dy = randn(rng, n, dtype, 1e-3)
    dy[2::5] = tiny * rng.uniform(-1, 1, dy[2::5].size)
    return x, dy


def assert_script_says_no_torch(script, tmp_path):
    """A benchmark script run where PyTorch cannot be imported says so, exits
    0 and writes no JSON."""
    import subprocess
    import sys

    out = str(tmp_path / "x.json")
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = [{script!r}, '--json', {out!r}]; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PyTorch is not installed" in proc.stdout
    assert not (tmp_path / "x.json").exists()


def rng_for(*key) -> np.random.Generator:
    """A generator seeded by a test's own parameters (stable across runs)."""
    # hash() of str is salted per process; crc32 is stable.
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def assert_close(actual, desired, name="", dtype=None, scale=1.0):
    """Compare one output with the tolerance of its dtype (exact for ints)."""
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.shape == desired.shape, f"{name}: shape {actual.shape} != {desired.shape}"
    dt = np.dtype(dtype) if dtype is not None else desired.dtype
    if dt.kind != "f":
        np.testing.assert_array_equal(actual, desired, err_msg=f"{name} differs")
        return
    rtol, atol = TOLERANCES[dt]
    rtol, atol = rtol * scale, atol * scale
    mag = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(
        actual, desired, rtol=rtol, atol=atol * max(mag, 1.0), err_msg=f"{name} differs"
    )


def _as_tuple(res):
    if res is None:
        return ()
    return tuple(res) if isinstance(res, tuple) else (res,)


def run_both(kernel_fn, ref_fn, make_args, names=None, n_out=0, scale=1.0, updated=()):
    """Run ``kernel_fn`` and ``ref_fn`` on deep copies of ``make_args()``.

    With ``n_out=k`` the first ``k`` arguments are output buffers (the kernel
    convention) and they are what gets compared; otherwise the return values
    are compared. Each output is compared on its own (``names`` label them
    in failures). Inputs must come back unchanged on both sides, except the
    argument indices in ``updated`` (state updated in place, e.g. running
    statistics; return them to compare them).
    Returns (kernel outputs, reference outputs).
    """
    args = make_args()
    k_args = copy.deepcopy(args)
    r_args = copy.deepcopy(args)
    k_res = kernel_fn(*k_args)
    r_res = ref_fn(*r_args)
    if n_out:
        k_outs, r_outs = tuple(k_args[:n_out]), tuple(r_args[:n_out])
    else:
        k_outs, r_outs = _as_tuple(k_res), _as_tuple(r_res)
    assert len(k_outs) == len(r_outs)
    names = names or [f"output {i}" for i in range(len(k_outs))]
    # Scalars (a mean loss) get the tolerance of the op's arrays.
    float_dts = [r.dtype for r in r_outs if isinstance(r, np.ndarray) and r.dtype.kind == "f"]
    scalar_dt = float_dts[0] if float_dts else np.float64
    for name, k, r in zip(names, k_outs, r_outs):
        if k is None or r is None:
            assert k is None and r is None, f"{name}: one side returned None"
            continue
        if np.isscalar(k) or np.ndim(k) == 0:
            assert_close(k, r, name, dtype=scalar_dt, scale=scale)
        else:
            assert np.asarray(k).dtype == np.asarray(r).dtype, f"{name}: dtype differs"
            assert_close(k, r, name, scale=scale)
    for i, (a, k, r) in enumerate(zip(args[n_out:], k_args[n_out:], r_args[n_out:])):
        if isinstance(a, np.ndarray) and n_out + i not in updated:
            assert np.array_equal(a, k, equal_nan=True), f"numba side wrote into input {n_out + i}"
            assert np.array_equal(a, r, equal_nan=True), f"numpy side wrote into input {n_out + i}"
    return k_outs, r_outs


def backends(fn, **fixed):
    """(numba caller, numpy caller) for a ``fastnn.functional`` function."""
    return (lambda *a: fn(*a, backend="numba", **fixed),
            lambda *a: fn(*a, backend="numpy", **fixed))


# ------------------------------------------------------------- finite differences


def numeric_grad(f, x, h=1e-6):
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``x``
    (float64, perturbed in place and restored)."""
    assert x.dtype == np.float64, "finite differences need float64"
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def assert_grad_close(analytic, numeric, name, rtol=1e-5, atol=1e-7):
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                               err_msg=f"{name}: analytic gradient != finite differences")


def check_loss_keeps_its_targets(make_mod, preds, targets, rtol, atol):
    """A loss module keeps its own targets: the caller refills one batch
    buffer between each forward and its backward (the training forward's
    gradient is handed over, a second backward and an eval forward's
    backward recompute it from the kept targets), step after step, as a
    batch loop does; each backward equals a fresh module's on the batch."""
    mod = make_mod()
    buf = np.empty_like(targets[0])
    for k, (pred, target) in enumerate(zip(preds, targets)):
        fresh = make_mod()
        fresh.forward(pred, target.copy(), training=False)
        want = fresh.backward()
        for training in (True, False):
            buf[...] = target
            mod.forward(pred, buf, training=training)
            buf[...] = targets[(k + 1) % len(targets)]  # refilled before the backward
            np.testing.assert_allclose(mod.backward(), want, rtol=rtol, atol=atol)
            np.testing.assert_allclose(mod.backward(), want, rtol=rtol, atol=atol)


def check_loss_hands_over_its_gradient(mod, inputs, rtol, atol):
    """A loss module's training forward computes the gradient and the next
    backward hands it over; after an eval forward, and for a second backward,
    the backward recomputes it: the same values either way, scaled by dout.
    Returns the gradient."""
    loss_eval = mod.forward(*inputs, training=False)
    d_eval = mod.backward()
    loss_train = mod.forward(*inputs)
    d_train = mod.backward()
    d_again = mod.backward()
    assert loss_train == pytest.approx(loss_eval, rel=1e-6)
    np.testing.assert_allclose(d_train, d_eval, rtol=rtol, atol=atol)
    np.testing.assert_allclose(d_again, d_train, rtol=rtol, atol=atol)
    assert d_again is not d_train  # the handed-over array is the caller's
    mod.forward(*inputs)
    np.testing.assert_allclose(mod.backward(2.5), 2.5 * d_eval, rtol=rtol, atol=atol)
    return d_eval
