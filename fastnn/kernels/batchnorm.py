"""Batch normalisation over the batch axis of ``x: (N, D)``.

``N`` batch, ``D`` features. Training mode normalises with the batch's
mean and biased variance and saves ``mean: (D,)`` and ``rstd: (D,)``
(1 / sqrt(var + eps)) for the backward; the running statistics are updated
by the caller (``functional.batchnorm``). Eval mode uses the running ones.

Column sums walk the rows in order (contiguous, vectorised), in fixed row
chunks (runs of ``FLUSH_ROWS`` rows in x's dtype, flushed into float64
partials, added in chunk order: ``_reduce``): the result does not depend
on the thread count. The variance is E[(x - m0)^2] - (mean - m0)^2 around
the first row m0, finished in float64: one pass over x, and no cancellation
when the mean is large against the spread. Gradients are overwritten.
"""

import numpy as np
from numba import prange

from .._config import jit_helper, kernel, same_data, typed
from ._reduce import FLUSH_ROWS, add_partials, chunk_partials, chunk_rows, flush, zero


# Serial cost per element of each kernel, (float32, float64), in units of
# 0.25 ns (measured one thread, 1024x1024, benchmarks/vs_torch.py's machine):
# ``functional`` passes ``work = size * cost``, so every kernel goes
# parallel at about the same serial time (PARALLEL_MIN_WORK units, ~130 us,
# against a ~50 us launch) instead of at the same element count.
# The training kernels launch twice (statistics, then the rows): their
# costs are halved, so they go parallel at twice the serial time.
COST = {"batchnorm_forward": (0.4, 1.1), "batchnorm_forward_eval": (0.4, 1.0),
        "batchnorm_backward": (0.8, 4.0), "blend_running": (0.35, 0.85)}


@jit_helper
def _column_sums(s1, s2, a, b, shift, use_b):
    """Per row chunk c: s1[c] = sum(a - shift), s2[c] = sum((a - shift)^2),
    or with use_b: s1[c] = sum(a), s2[c] = sum(a * (b - shift)).
    Runs of FLUSH_ROWS rows are summed in a's dtype, then added into the
    float64 partials (float64 read-modify-writes per element made the
    float32 forward 1.3x slower); inside a run, four rows at a time, so the
    partial rows are read and written once per four input rows (the
    statistics pass of a (4096, 1024) float32 forward: 460 -> 352 us)."""
    n, d = a.shape
    nchunks = s1.shape[0]
    for c in prange(nchunks):
        i0, i1 = chunk_rows(c, n, nchunks)
        r1 = np.empty(d, dtype=a.dtype)
        r2 = np.empty(d, dtype=a.dtype)
        zero(r1)
        zero(r2)
        i = i0
        while i < i1:
            run_end = min(i + FLUSH_ROWS, i1)
            while i + 4 <= run_end:
                if use_b:
                    for j in range(d):
                        a0, a1, a2, a3 = a[i, j], a[i + 1, j], a[i + 2, j], a[i + 3, j]
                        sh = shift[j]
                        r1[j] += (a0 + a1) + (a2 + a3)
                        r2[j] += ((a0 * (b[i, j] - sh) + a1 * (b[i + 1, j] - sh))
                                  + (a2 * (b[i + 2, j] - sh) + a3 * (b[i + 3, j] - sh)))
                else:
                    for j in range(d):
                        sh = shift[j]
                        t0, t1 = a[i, j] - sh, a[i + 1, j] - sh
                        t2, t3 = a[i + 2, j] - sh, a[i + 3, j] - sh
                        r1[j] += (t0 + t1) + (t2 + t3)
                        r2[j] += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3)
                i += 4
            while i < run_end:
                if use_b:
                    for j in range(d):
                        r1[j] += a[i, j]
                        r2[j] += a[i, j] * (b[i, j] - shift[j])
                else:
                    for j in range(d):
                        t = a[i, j] - shift[j]
                        r1[j] += t
                        r2[j] += t * t
                i += 1
            flush(s1[c], r1)
            flush(s2[c], r2)


@jit_helper
def _normalise(y, x, mean, a, beta):
    """y = (x - mean) * a + beta, a = rstd * gamma. Folding the shift into
    y = x * a + (beta - mean * a) saves a subtraction but cancels when
    |mean| * a is large against |y| (a constant column of 1e6: -23.3
    instead of 0 in float32)."""
    n, d = x.shape
    for i in prange(n):
        for j in range(d):
            y[i, j] = (x[i, j] - mean[j]) * a[j] + beta[j]


@kernel
def batchnorm_forward(y, mean, var, rstd, x, gamma, beta, eps):
    """Training: mean, var (biased), rstd = 1/sqrt(var + eps) over axis 0;
    y = (x - mean) * rstd * gamma + beta."""
    n, d = x.shape
    s1, s2 = chunk_partials(n, d)
    shift = np.empty(d, dtype=x.dtype)
    for j in range(d):
        shift[j] = x[0, j]
    _column_sums(s1, s2, x, x, shift, False)
    t1, t2 = add_partials(s1, s2)
    a = np.empty(d, dtype=x.dtype)
    for j in range(d):
        dm = t1[j] / n
        v = max(t2[j] / n - dm * dm, 0.0)
        m = shift[j] + dm
        r = 1.0 / np.sqrt(v + eps)
        mean[j] = m
        var[j] = v
        rstd[j] = r
        a[j] = r * gamma[j]
    if same_data(y, x):  # in place: one array for both (see _config.same_data)
        _normalise(y, y, mean, a, beta)
    else:
        _normalise(y, x, mean, a, beta)


@kernel
def blend_running(running, batch, momentum):
    """running = (1 - momentum) * running + momentum * batch, in place: NumPy's
    ``running *= 1 - momentum; running += momentum * batch`` to one rounding
    (the multiply-add may be fused). Those six small NumPy calls cost 2.8 us
    a training step at D = 256, this kernel 0.26; the compiled step calls it
    too, so both paths keep the same running statistics."""
    keep = typed(running, 1.0 - momentum)
    mom = typed(running, momentum)
    for j in range(running.shape[0]):
        running[j] = running[j] * keep
        running[j] = running[j] + mom * batch[j]


@kernel
def batchnorm_forward_eval(y, x, running_mean, running_var, gamma, beta, eps):
    """Eval: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    d = x.shape[1]
    a = np.empty(d, dtype=x.dtype)
    for j in range(d):
        r = 1.0 / np.sqrt(running_var[j] + eps)
        a[j] = r * gamma[j]
    if same_data(y, x):  # in place: one array for both (see _config.same_data)
        _normalise(y, y, running_mean, a, beta)
    else:
        _normalise(y, x, running_mean, a, beta)


@kernel
def batchnorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma):
    """dbeta = sum(dy), dgamma = sum(dy * xhat),
    dx = gamma * rstd / N * (N dy - dbeta - xhat * dgamma), xhat = (x - mean) * rstd."""
    n, d = x.shape
    s1, s2 = chunk_partials(n, d)
    _column_sums(s1, s2, dy, x, mean, True)
    t1, t2 = add_partials(s1, s2)
    # dx = k1 * dy - k0 - (x - mean) * k2, per column
    k0 = np.empty(d, dtype=x.dtype)
    k1 = np.empty(d, dtype=x.dtype)
    k2 = np.empty(d, dtype=x.dtype)
    for j in range(d):
        sb = t1[j]
        sg = t2[j]
        r = np.float64(rstd[j])
        sg *= r  # sum(dy * xhat)
        dbeta[j] = sb
        dgamma[j] = sg
        g = gamma[j] * r
        k1[j] = g
        k0[j] = g * sb / n
        k2[j] = g * r * sg / n
    for i in prange(n):
        for j in range(d):
            dx[i, j] = k1[j] * dy[i, j] - k0[j] - (x[i, j] - mean[j]) * k2[j]
