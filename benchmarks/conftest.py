"""Shared machinery of the numba-vs-NumPy benchmarks (``bench_<family>.py``).

Every benchmark function takes two parameters generated here:

* ``case``: ``size`` ("small", "medium", "large"), ``shape`` and ``dtype``.
  The shapes come from the module's ``SHAPES`` dict (size -> shape), else
  ``DEFAULT_SHAPES``; all sizes run in float32, the medium one in float64 too.
* ``impl``: ``"numba"`` (``fastnn.kernels.<family>``) or ``"numpy"``
  (``fastnn.reference.<family>``, same names and signatures).

and runs its op through the ``compare_and_time`` fixture, which checks the
kernel against the reference on the same inputs, warms both up (numba
compiles on the first call), then times the selected implementation on
caller-owned outputs. Numba and NumPy land in one ``benchmark.group`` per
(op, shape, dtype), so pytest-benchmark prints them side by side;
``benchmarks/speedup_table.py`` turns the ``--benchmark-json`` into a table.

With ``--benchmark-disable`` (as in CI) each body runs once as a test:
the agreement checks still run, nothing is timed.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np
import pytest

import fastnn  # noqa: F401  (fastnn._config sets up numba's threading first)
from fastnn._config import Kernel

IMPLS = ("numba", "numpy")
DEFAULT_SHAPES = {"small": (64, 256), "medium": (1024, 1024), "large": (4096, 1024)}
FLOAT64_SIZE = "medium"

# Kernels accumulate in another order (some in float64) than NumPy, and
# fastmath reassociates: agreement, not bit-equality. atol is relative to
# the output's largest magnitude: a float32 sum over 4096 rows (dgamma, db)
# is off by ~N * eps of its scale in NumPy's naive axis-0 sum.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-12),
}


class Case(NamedTuple):
    size: str
    shape: tuple
    dtype_name: str  # a string keeps the params in --benchmark-json readable

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.dtype_name)

    @property
    def id(self) -> str:
        return "x".join(map(str, self.shape)) + "-" + self.dtype_name


def _cases(shapes: dict) -> list[Case]:
    cases = [Case(size, tuple(shape), "float32") for size, shape in shapes.items()]
    if FLOAT64_SIZE in shapes:
        cases.append(Case(FLOAT64_SIZE, tuple(shapes[FLOAT64_SIZE]), "float64"))
    return cases


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = _cases(getattr(metafunc.module, "SHAPES", DEFAULT_SHAPES))
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", IMPLS)


@pytest.fixture
def rng(case):
    """Seeded per case, so numba and numpy see the same inputs."""
    return np.random.default_rng(zlib.crc32(case.id.encode()))


@pytest.fixture
def randn(rng, case):
    """``randn(*shape, scale=1.0)``: normal samples in the case's dtype."""

    def make(*shape, scale=1.0):
        x = rng.standard_normal(shape, dtype=case.dtype)
        if scale != 1.0:
            x *= case.dtype.type(scale)
        return x

    return make


def _check(name, got, want, dtype):
    if got.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=f"numba and NumPy differ in {name}")
    else:
        tol = TOLERANCES[dtype]
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   err_msg=f"numba and NumPy differ in {name}")


@pytest.fixture
def compare_and_time(benchmark, impl, case):
    """``compare_and_time(op, kernel, reference, outputs, inputs, flops=None, shape=None)``.

    ``outputs`` (dict name -> array, in signature order) are the arrays the
    op writes; arrays it updates in place (optimizer state) go there too.
    ``inputs`` is the tuple of the remaining arguments (arrays, then
    hyperparameters). The reference runs on copies of ``outputs``, the
    kernel on ``outputs`` themselves; every output must agree. ``work``
    (what the Kernel wrapper picks serial or parallel by) is the size of the
    largest array, as ``fastnn.functional`` passes. ``flops`` (GEMMs) and the
    bytes the op reads and writes at least go to ``extra_info``; ``shape``
    overrides the case's shape there (Linear's (N, D, H)).
    """

    def run(op, kernel, reference, outputs, inputs, *, flops=None, shape=None):
        arrays = [a for a in (*outputs.values(), *inputs) if isinstance(a, np.ndarray)]
        work = max(a.size for a in arrays)
        kw = {"work": work} if isinstance(kernel, Kernel) else {}
        outs = tuple(outputs.values())

        # Check before timing; these calls also compile and warm up both.
        expected = {name: a.copy() for name, a in outputs.items()}
        reference(*expected.values(), *inputs)
        kernel(*outs, *inputs, **kw)
        for name, a in outputs.items():
            _check(f"{op}: {name}", a, expected[name], case.dtype)

        shape = tuple(shape or case.shape)
        shape_id = "x".join(map(str, shape))
        benchmark.group = f"{op}-{shape_id}-{case.dtype.name}"
        benchmark.extra_info.update(
            op=op,
            impl=impl,
            shape=list(shape),
            dtype=case.dtype.name,
            size=case.size,
            work=work,
            bytes=int(sum(a.nbytes for a in arrays)),
        )
        if flops is not None:
            benchmark.extra_info["flops"] = int(flops)
        if impl == "numba":
            benchmark(kernel, *outs, *inputs, **kw)
        else:
            benchmark(reference, *outs, *inputs)

    return run
