"""Data-parallel training over MPI: ``fit(..., comm=MPI.COMM_WORLD)``.

Every rank runs the same script on the same ``X, y``; ``batch_size`` is the
global batch and rank r trains on its contiguous share of every global batch
(:func:`share`). At the start, the ranks check that they hold the same model
and optimizer (:func:`check_same_model`; refused on every rank, naming the
difference) and take rank 0's parameters, buffers and optimizer state.

The result does not depend on the number of ranks, up to float summation
order:

* gradients: the loss is a mean over the local share, so rank r's gradient is
  weighted by ``n_r / N`` and the weighted gradients are summed once per step
  over a flat buffer that the parameters' ``.grad`` arrays are views of (no
  packing): through a shared-memory window on one machine, an in-place
  ``Allreduce`` across machines (:class:`GradientAverager`);
* Dropout: the masks are drawn by global row (``Dropout.row_offset``);
* BatchNorm: batch statistics over the global batch (:class:`SyncBatchNorm`,
  installed as ``BatchNorm.sync`` during ``fit``);
* the epoch loss and validation metrics are sums over all ranks, so history
  and early stopping are the same everywhere.

A rank that raises inside ``fit`` prints its traceback and aborts the whole
job (``comm.Abort(1)``): the other ranks would otherwise wait forever in the
next collective. A communicator of one rank is the same as ``comm=None``.

mpi4py is optional (``pip install 'fastnn[mpi]'``): this module imports it
only when a communicator is used.
"""

from __future__ import annotations

import functools
import numbers
import os
import sys
import time
import traceback

import numpy as np

from . import nn

__all__ = ["share", "check_same_model", "broadcast_state", "SyncBatchNorm", "GradientAverager",
           "DataParallel", "sum_in_rank_order", "wait", "RefusedError", "ModelMismatchError", "setup", "abort_on_error", "is_root", "barrier"]


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - comm objects come from mpi4py
        raise ImportError("comm= needs mpi4py: pip install 'fastnn[mpi]'") from exc
    return MPI


def _size(comm) -> int:
    return 1 if comm is None else int(comm.Get_size())


def _check_comm(comm):
    if comm is not None and not all(callable(getattr(comm, a, None))
                                    for a in ("Get_size", "Get_rank", "Allreduce", "bcast", "Abort")):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD) or None, "
                        f"got {type(comm).__name__}")


def is_root(comm) -> bool:
    """True on rank 0, and without a communicator."""
    return comm is None or comm.Get_rank() == 0


def barrier(comm) -> None:
    if _size(comm) > 1:
        comm.Barrier()


def share(start: int, stop: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous rows ``[a, b)`` of the global rows
    ``[start, stop)``: sizes differ by at most one, earlier ranks first."""
    for name, v in (("start", start), ("stop", stop), ("rank", rank), ("size", size)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    if stop < start:
        raise ValueError(f"stop ({stop}) must not be less than start ({start})")
    return _share(int(start), int(stop), int(rank), int(size))


def _share(start, stop, rank, size):
    """:func:`share` without the checks, for the training step (the caller's values are valid)."""
    n = stop - start
    return start + rank * n // size, start + (rank + 1) * n // size


def _modules(m, path="model"):
    yield path, m
    for i, child in m._children():
        yield from _modules(child, f"{path}[{i}]" if isinstance(m, nn.Sequential) else f"{path}.{i}")


def describe(model, optimizer=None) -> list:
    """What must agree between ranks: each module's type, its parameters' and
    buffers' shapes and dtypes, the optimizer's class; ``(where, what)`` pairs."""
    out = []
    for path, m in _modules(model):
        out.append((path, type(m).__name__))
        for name, a in list(m._named_params()) + list(m._named_buffers()):
            a = np.asarray(a)
            out.append((f"{path}.{name}", f"shape {a.shape} dtype {a.dtype}"))
    if optimizer is not None:
        out.append(("optimizer", type(optimizer).__name__))
    return out


def _first_difference(mine: list, root: list) -> str | None:
    for (w0, d0), (w1, d1) in zip(root, mine):
        if w0 != w1:
            return f"{w0} ({d0}) on rank 0, {w1} ({d1}) here"
        if d0 != d1:
            return f"{w0} is {d0} on rank 0, {d1} here"
    if len(mine) != len(root):
        longer, extra = ("rank 0", root[len(mine)]) if len(root) > len(mine) else ("here", mine[len(root)])
        return f"{extra[0]} ({extra[1]}) exists {longer} only"
    return None


def check_same_model(comm, model, optimizer=None, **settings) -> None:
    """Raise the same ValueError on every rank when the ranks' models
    (module types, parameter/buffer shapes and dtypes), optimizer classes or
    ``settings`` (e.g. data length, batch size) differ, naming the first
    difference of each rank that differs from rank 0."""
    mine = describe(model, optimizer) + [(f"fit's {k}", repr(v)) for k, v in sorted(settings.items())]
    everyone = comm.allgather(mine)
    problems = []
    for r, desc in enumerate(everyone[1:], start=1):
        diff = _first_difference(desc, everyone[0])
        if diff is not None:
            problems.append(f"rank {r}: " + diff.replace(" here", f" on rank {r}"))
    if problems:
        raise ModelMismatchError("the ranks do not train the same model; every rank must build the same "
                         "model, optimizer and data: " + "; ".join(problems))


def broadcast_state(comm, model, optimizer=None, root: int = 0) -> None:
    """Copy rank ``root``'s parameters, buffers (BatchNorm statistics, Dropout
    seeds and steps) and optimizer state to every rank, in place."""
    state = comm.bcast(model.state_dict() if comm.Get_rank() == root else None, root=root)
    model.load_state_dict(state)
    if optimizer is not None and callable(getattr(optimizer, "state_dict", None)):
        ostate = comm.bcast(optimizer.state_dict() if comm.Get_rank() == root else None, root=root)
        optimizer.load_state_dict(ostate)


class SyncBatchNorm:
    """BatchNorm's training forward and backward over the global batch.

    Installed as ``bn.sync`` on each ``nn.BatchNorm`` by data-parallel
    ``fit``. Forward: one all-reduce of the per-feature sums of ``x - c``
    and ``(x - c)^2`` (float64; ``c`` is the running mean, the same on every
    rank and near the batch mean, so the variance does not cancel) and of the
    row count. Backward: one all-reduce of the per-feature sums of
    ``dy`` and ``dy * xhat`` (each rank's weighted by its row count ``n_r``,
    since ``dy`` is the gradient of the mean loss over its ``n_r`` rows). The
    parameter gradients are left local; the gradient all-reduce sums them.
    Both sums are :func:`sum_in_rank_order`: the same bits on every rank.
    """

    def __init__(self, comm):
        self.comm = comm

    def forward(self, bn, x):
        n, d = x.shape
        c = bn.running_mean.astype(np.float64)
        t = x - c  # float64
        buf = np.empty(2 * d + 1)
        np.sum(t, axis=0, out=buf[:d])
        np.einsum("ij,ij->j", t, t, out=buf[d:2 * d])
        buf[2 * d] = n
        buf = sum_in_rank_order(self.comm, buf)
        total = int(round(buf[2 * d]))
        if total < 2:
            raise ValueError(f"batchnorm in training mode needs more than 1 sample per global batch, "
                             f"got {total}")
        dm = buf[:d] / total
        var = np.maximum(buf[d:2 * d] / total - dm * dm, 0.0)
        mean = c + dm
        rstd = 1.0 / np.sqrt(var + bn.eps)
        dt = x.dtype
        scale = rstd * bn.gamma.view(np.ndarray)
        y = ((x - mean) * scale + bn.beta.view(np.ndarray)).astype(dt, copy=False)
        m = bn.momentum
        bn.running_mean[...] = (1 - m) * bn.running_mean + m * mean
        bn.running_var[...] = (1 - m) * bn.running_var + m * var
        return y, mean.astype(dt), rstd.astype(dt), total

    def backward(self, bn, dy, x, mean, rstd, total):
        n, d = x.shape
        if dy.shape != x.shape:
            raise ValueError(f"dout must have the shape of the forward's input {x.shape}, got {dy.shape}")
        mean64, rstd64 = mean.astype(np.float64), rstd.astype(np.float64)
        xhat = (x - mean64) * rstd64
        buf = np.empty(2 * d)
        np.sum(dy, axis=0, out=buf[:d], dtype=np.float64)
        np.einsum("ij,ij->j", dy, xhat, out=buf[d:])
        bn.beta.grad[...] = buf[:d]
        bn.gamma.grad[...] = buf[d:]
        buf *= n
        buf = sum_in_rank_order(self.comm, buf)
        buf /= total
        dx = (dy - (buf[:d] + xhat * buf[d:]) / n) * (rstd64 * bn.gamma.view(np.ndarray))
        return dx.astype(x.dtype, copy=False)


def sum_in_rank_order(comm, buf: np.ndarray) -> np.ndarray:
    """The sum over ranks of the float64 arrays ``buf``, added in rank order
    on every rank, so that every rank gets the same bits (``Allreduce`` need
    not); for small arrays (statistics, metrics). Waited for politely."""
    everyone = np.empty((comm.Get_size(),) + buf.shape, buf.dtype)
    wait(comm.Iallgather(buf, everyone))
    total = everyone[0].copy()
    for part in everyone[1:]:
        total += part
    return total


class GradientAverager:
    """Gradient averaging: the parameters' ``.grad`` arrays become views of
    one flat buffer per dtype (no packing or unpacking), and
    :meth:`average` makes it the sum over ranks of ``weight_r * grad_r``.

    Ranks on several machines (or more than ``shared_memory_ranks``): one
    in-place ``Allreduce`` of each flat buffer. Up to ``shared_memory_ranks``
    ranks on one machine: an MPI shared-memory window, double-buffered by
    step parity; each rank writes its weighted gradients into its segment,
    the ranks meet once (a barrier), and each adds up all segments in rank
    order (the same sum, bit for bit, everywhere). The step after may write
    the other half while slower ranks still read this one. The barrier is
    waited for by polling, then sleeping: on a machine with more busy
    processes than cores a spinning rank would take the core its partner
    needs (MPI's own collectives spin). Measured under load on 2 cores, 2
    ranks: about 25% less time per step than ``Allreduce``.
    """

    shared_memory_ranks = 4

    def __init__(self, comm, params):
        self.comm = comm
        by_dtype = {}
        for p in params:
            by_dtype.setdefault(np.dtype(p.dtype), []).append(p)
        self.buffers = []
        for dt, ps in by_dtype.items():
            flat = np.zeros(sum(p.size for p in ps), dt)
            i = 0
            for p in ps:
                view = flat[i:i + p.size].reshape(p.shape)
                if p.grad is not None:
                    view[...] = p.grad
                p.grad = view
                i += p.size
            self.buffers.append(flat)
        self.win = self.node = None
        self.step = 0
        size = comm.Get_size()
        if len(self.buffers) == 1 and 1 < size <= self.shared_memory_ranks:
            MPI = _mpi()
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
            if node.Get_size() == size:  # every rank on this machine
                self._open_window(node)
            else:
                node.Free()

    def _open_window(self, node):
        MPI = _mpi()
        flat = self.buffers[0]
        self.node = node
        self.win = MPI.Win.Allocate_shared(2 * flat.nbytes, flat.itemsize, comm=node)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self.segments = []
        for r in range(node.Get_size()):
            mem, _ = self.win.Shared_query(r)
            self.segments.append(np.frombuffer(mem, flat.dtype, count=2 * flat.size).reshape(2, flat.size))

    def average(self, weight: float) -> None:
        """grad = sum over ranks of ``weight_r * grad_r``."""
        if self.win is None:
            MPI = _mpi()
            for flat in self.buffers:
                if weight != 1.0:
                    flat *= flat.dtype.type(weight)
                self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            return
        flat = self.buffers[0]
        k = self.step & 1
        self.step += 1
        np.multiply(flat, flat.dtype.type(weight), out=self.segments[self.node.Get_rank()][k])
        self.win.Sync()
        wait(self.node.Ibarrier())
        self.win.Sync()
        segs = self.segments
        np.add(segs[0][k], segs[1][k], out=flat)
        for seg in segs[2:]:
            np.add(flat, seg[k], out=flat)

    def close(self) -> None:
        """Free the shared window (collective: every rank calls it)."""
        if self.win is not None:
            self.win.Unlock_all()
            self.win.Free()
            self.node.Free()
            self.win = self.node = None


_SPIN_S = 2e-4


def wait(req) -> None:
    """Complete ``req``, polling for ``_SPIN_S`` seconds, then sleeping
    20 us between polls."""
    t_end = time.perf_counter() + _SPIN_S
    while not req.Test():
        if time.perf_counter() > t_end:
            time.sleep(2e-5)


class DataParallel:
    """What ``fit`` needs from the communicator; made by :func:`setup`."""

    def __init__(self, comm, model, optimizer, params):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.dropouts = [m for _, m in _modules(model) if isinstance(m, nn.Dropout)]
        self.norms = [m for _, m in _modules(model) if isinstance(m, nn.BatchNorm)]
        self.averager = GradientAverager(comm, params)
        sync = SyncBatchNorm(comm)
        for bn in self.norms:
            bn.sync = sync
        self.weight = 1.0

    def share(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's rows of the global batch ``[start, stop)``; sets the
        Dropout row offsets and the gradient weight for this step."""
        a, b = _share(start, stop, self.rank, self.size)
        for d in self.dropouts:
            d.row_offset = a - start
        self.weight = (b - a) / (stop - start)
        return a, b

    def average_gradients(self) -> None:
        self.averager.average(self.weight)

    def sum(self, *values) -> list:
        """Sums over the ranks of float ``values``."""
        return sum_in_rank_order(self.comm, np.array(values, dtype=np.float64)).tolist()

    def evaluate(self, evaluate, X, y, names) -> dict:
        """``evaluate(X_share, y_share)`` (a dict of means, keyed by ``names``)
        over the whole of (X, y), each rank taking its share of the rows; the
        same row-weighted means on every rank."""
        a, b = _share(0, len(X), self.rank, self.size)
        local = evaluate(X[a:b], y[a:b]) if b > a else dict.fromkeys(names, 0.0)
        totals = self.sum(*[local[k] * (b - a) for k in names])
        return {k: t / len(X) for k, t in zip(names, totals)}


def setup(comm, model, optimizer, params, seed, **settings):
    """None without a communicator or with one rank; else check that all
    ranks agree (:func:`check_same_model`), take rank 0's state and shuffling
    seed, and return the :class:`DataParallel` helper and the seed."""
    _check_comm(comm)
    if _size(comm) == 1:
        return None, seed
    check_same_model(comm, model, optimizer, **settings)
    size, n, batch = comm.Get_size(), settings["n"], settings["batch_size"]
    smallest = min(batch, n) if n % batch == 0 or n < batch else min(batch, n % batch)
    if smallest < size:
        raise RefusedError(f"a global batch of {smallest} rows (batch_size={batch}, {n} rows) cannot give "
                           f"each of the {size} ranks a row; use a batch_size such that every batch, the "
                           f"last included, has at least {size} rows, or fewer ranks")
    seed = comm.bcast(seed, root=0)
    broadcast_state(comm, model, optimizer)
    dp = _ACTIVE[id(model)] = DataParallel(comm, model, optimizer, params)
    return dp, seed


_ACTIVE = {}  # id(model) -> its DataParallel while fit runs
ABORT_GRACE_S = 0.5  # seconds between a failed rank's message and its abort


class RefusedError(ValueError):
    """The ranks cannot train together; raised alike on every rank before
    training starts (so no abort is needed)."""


class ModelMismatchError(RefusedError):
    """The ranks hold different models, optimizers or fit settings."""


def abort_on_error(fn):
    """Decorator for ``fit``: with a ``comm=`` of several ranks, an exception
    prints its traceback and aborts the job (never a hang), except a
    :class:`RefusedError`, raised alike on every rank; the
    data-parallel hooks are removed from the model when ``fit`` ends."""

    @functools.wraps(fn)
    def wrapper(*args, comm=None, **kwargs):
        _check_comm(comm)
        if _size(comm) <= 1:
            return fn(*args, comm=comm, **kwargs)
        try:
            return fn(*args, comm=comm, **kwargs)
        except RefusedError:
            raise
        except BaseException as exc:
            # One write, the error named in its first line, and a moment before
            # the abort: mpiexec forwards a rank's output asynchronously and
            # stops when the job is aborted, which once cut the traceback off
            # after the first line.
            sys.stdout.flush()
            sys.stderr.write(f"fastnn: rank {comm.Get_rank()} of {comm.Get_size()} failed "
                             f"({type(exc).__name__}: {exc}); aborting all ranks\n"
                             + traceback.format_exc())
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_S)
            comm.Abort(1)
            os._exit(1)  # in case Abort returns: never go on to a collective that would hang
        finally:
            model = args[0] if args else kwargs.get("model")
            dp = _ACTIVE.pop(id(model), None)
            if dp is not None:
                dp.averager.close()
            if isinstance(model, nn.Module):
                for _, m in _modules(model):
                    if isinstance(m, nn.Dropout):
                        m.row_offset = 0
                    elif isinstance(m, nn.BatchNorm):
                        m.sync = None

    return wrapper
