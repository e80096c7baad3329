"""Checkpoints: a model, optionally its optimizer, and extra values in one ``.npz``.

``save(path, model, optimizer=None, **extra)`` writes every parameter and
buffer (BatchNorm's running statistics, Dropout's seed and step counter),
the optimizer's step count, moments and hyperparameters, and ``extra``
values (numbers, strings, bools, arrays: e.g. ``epoch=3, seed=0``). No
pickle is written or read (``allow_pickle=False``): loading a checkpoint
never runs code. The file is written to a temporary file in the same
directory, fsynced, then renamed over ``path``: a crash leaves the old
checkpoint or the new one, never half of one. The temporary file's name holds
the writer's host and process id (``.<name>.<host>.<pid>.<random>.tmp``); a
successful save removes the temporaries that earlier saves of the same path
left behind when their process died (killed mid-save), and leaves those of
live writers and of other hosts alone.

``load(path, model, optimizer=None)`` checks names, shapes and dtypes
against the model (and the optimizer's class and state) before changing
anything, lists every difference in the error, copies the arrays in place
(so optimizers keep their references) and returns the ``extra`` values.

Resuming a run bit for bit (same thread count, numba backend)::

    hist = fit(model, loss_fn, opt, X, y, epochs=1, seed=0)
    save("ckpt.npz", model, opt, epoch=1, seed=hist.seed)
    # later, in a fresh process, with the same architecture:
    extra = load("ckpt.npz", model, opt)
    fit(model, loss_fn, opt, X, y, epochs=2, seed=extra["seed"], initial_epoch=extra["epoch"])

Layout of the archive: ``model/<name>``, ``optimizer/state/<i>/<name>``,
``optimizer/param_groups/<g>/<hyperparameter>`` (one set per parameter group), ``extra/<key>`` and
``fastnn/format``, ``fastnn/optimizer`` (the optimizer's class name).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import tokenize
import zipfile
import zlib

import numpy as np

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1


def _check_model(model):
    if not callable(getattr(model, "state_dict", None)) or not callable(getattr(model, "load_state_dict", None)):
        raise TypeError(f"model must be a fastnn Module, got {type(model).__name__}")


def _check_optimizer(optimizer):
    if not callable(getattr(optimizer, "state_dict", None)) or not callable(getattr(optimizer, "load_state_dict", None)):
        raise TypeError(f"optimizer must be a fastnn optimizer, got {type(optimizer).__name__}")


def _value(key, v) -> np.ndarray:
    """An extra or hyperparameter value as a non-object array."""
    if v is None:
        raise TypeError(f"{key}: None cannot be stored (no pickle); leave the value out")
    try:
        a = np.asarray(v)
    except (ValueError, OverflowError) as exc:
        raise TypeError(f"{key}: cannot be stored as an array ({exc})") from None
    if a.dtype.kind not in "biufcUS":
        raise TypeError(f"{key}: only numbers, bools, strings and numeric arrays can be stored "
                        f"without pickle, got {type(v).__name__}")
    return a


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    """This host's name, reduced to characters safe in a file name and free of dots."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or unknown: keep its file
    return True


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Unlink ``.<base>.<host>.<pid>.<random>.tmp`` files written on this host by
    processes that no longer run (a save killed before its rename)."""
    prefix, host = "." + base + ".", _host_tag()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix):-len(".tmp")].split(".")
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or _pid_alive(pid):
            continue  # possibly a save in progress (another thread or process)
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _atomic_savez(path, arrays: dict) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if os.path.exists(path):
        mode = os.stat(path).st_mode & 0o777
    else:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.{_host_tag()}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _remove_stale_temporaries(directory, base)
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def save(path, model, optimizer=None, *, comm=None, **extra) -> None:
    """Write ``model`` (and ``optimizer``, and ``extra`` values) to ``path``
    as an ``.npz`` archive, atomically. The name is used as given.
    With ``comm`` (an mpi4py communicator, every rank calling ``save``), rank
    0 writes and every rank returns once the file is complete."""
    if comm is not None and comm.Get_size() > 1:
        if comm.Get_rank() == 0:
            try:
                save(path, model, optimizer, **extra)
            except BaseException:
                import traceback

                traceback.print_exc()
                sys.stderr.flush()
                comm.Abort(1)  # the others would wait forever in the barrier
                raise
        comm.Barrier()
        return
    _check_model(model)
    arrays = {"fastnn/format": np.array(FORMAT_VERSION, dtype=np.int64)}
    for name, a in model.state_dict().items():
        arrays["model/" + name] = np.asarray(a)
    if optimizer is not None:
        _check_optimizer(optimizer)
        arrays["fastnn/optimizer"] = np.array(type(optimizer).__name__)
        sd = optimizer.state_dict()
        for i, st in sd["state"].items():
            for name, a in st.items():
                arrays[f"optimizer/state/{int(i)}/{name}"] = _value(f"optimizer state {i} {name}", a)
        for g, group in enumerate(sd["param_groups"]):
            for name, v in group.items():
                arrays[f"optimizer/param_groups/{g}/{name}"] = _value(f"optimizer {name}", v)
    for key, v in extra.items():
        arrays["extra/" + key] = _value(f"extra value {key!r}", v)
    _atomic_savez(path, arrays)


def _optimizer_state(arrays: dict) -> dict:
    """The optimizer's state_dict from the flat archive entries."""
    state, groups = {}, {}
    for key, a in arrays.items():
        parts = key.split("/")
        if len(parts) != 4 or not parts[2].isdecimal():
            raise ValueError(f"unexpected entry {key!r} in the checkpoint")
        if parts[1] == "state":
            # a step that is not a scalar is left for _parse_state_dict to name
            v = a.item() if parts[3] == "step" and a.ndim == 0 else a
            state.setdefault(int(parts[2]), {})[parts[3]] = v
        elif parts[1] == "param_groups":
            v = a.item() if a.ndim == 0 else (a.tolist() if parts[3] == "params" else tuple(a.tolist()))
            groups.setdefault(int(parts[2]), {})[parts[3]] = v
        else:
            raise ValueError(f"unexpected entry {key!r} in the checkpoint")
    return {"state": state, "param_groups": [groups[g] for g in sorted(groups)]}


def load(path, model, optimizer=None) -> dict:
    """Load a checkpoint written by :func:`save` into ``model`` (and
    ``optimizer``), in place; return the ``extra`` values (0-d arrays as
    Python scalars). Nothing is changed when anything does not match."""
    _check_model(model)
    if optimizer is not None:
        _check_optimizer(optimizer)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable .npz checkpoint (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(f"{path}: holds pickled objects; fastnn checkpoints never do, "
                             f"refusing to load it") from None
        raise ValueError(f"{path}: not a readable .npz checkpoint ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, tokenize.TokenError) as exc:
        # zlib: a corrupt compressed member; tokenize: numpy's parse of a corrupt .npy header
        raise ValueError(f"{path}: not a readable .npz checkpoint ({exc})") from None
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray):  # np.load gives a member that is not .npy as bytes
            raise ValueError(f"{path}: not a readable .npz checkpoint (entry {k!r} is not a .npy array)")
    if "fastnn/format" not in arrays:
        raise ValueError(f"{path}: not a fastnn checkpoint (no 'fastnn/format' entry)")
    fmt = arrays["fastnn/format"]
    if fmt.ndim != 0 or fmt.dtype.kind not in "iu":
        raise ValueError(f"{path}: not a readable .npz checkpoint ('fastnn/format' must be an "
                         f"integer, got {fmt.dtype} of shape {fmt.shape})")
    version = int(fmt)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version} is newer than this fastnn "
                         f"understands ({FORMAT_VERSION}); upgrade fastnn")
    model_state = {k[len("model/"):]: a for k, a in arrays.items() if k.startswith("model/")}
    opt_arrays = {k: a for k, a in arrays.items() if k.startswith("optimizer/")}
    extra = {k[len("extra/"):]: (a.item() if a.ndim == 0 else a)
             for k, a in arrays.items() if k.startswith("extra/")}

    opt_state = None
    if optimizer is not None:
        if "fastnn/optimizer" not in arrays:
            raise ValueError(f"{path}: the checkpoint holds no optimizer state "
                             f"(saved without optimizer=)")
        saved_cls = str(arrays["fastnn/optimizer"])
        if saved_cls != type(optimizer).__name__:
            raise ValueError(f"{path}: the checkpoint holds {saved_cls} state, but the optimizer "
                             f"is {type(optimizer).__name__}")
        try:
            opt_state = _optimizer_state(opt_arrays)
            parse = getattr(optimizer, "_parse_state_dict", None)
            if parse is not None:
                parse(opt_state)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(model_state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    return extra
