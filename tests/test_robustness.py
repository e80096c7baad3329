"""Robustness across threads, processes and installs, and the check-finite mode.

Anything that can abort the interpreter (an OpenMP runtime refusing a fork,
the workqueue layer detecting concurrent use, numba failing to find a cache
directory at import) runs in a subprocess, so a crash fails one test instead
of killing the run. Array sizes reach ``fastnn._config.PARALLEL_MIN_WORK`` so
that the parallel builds of the kernels run, not only the serial ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import _config, nn
from fastnn import functional as F

# The fastnn this process imported: child processes must test the same one.
PKG = Path(fastnn.__file__).resolve().parent
REPO = PKG.parent
TIMEOUT = 300


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("FASTNN_BACKEND", None)
    env.pop("FASTNN_CHECK_FINITE", None)
    env.update(extra)
    return env


def _run_script(tmp_path, source: str, *args, env=None, cmd_prefix=(), cwd=None):
    """Run ``source`` as a file (spawn needs an importable __main__)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    script.chmod(0o644)
    return subprocess.run(
        [*cmd_prefix, sys.executable, str(script), *map(str, args)],
        env=_env() if env is None else env, cwd=cwd or tmp_path,
        capture_output=True, text=True, timeout=TIMEOUT,
    )


def _ok(proc) -> str:
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


# Shared by the thread and process scripts: a model of every layer type,
# sized so that each kernel runs its parallel build.
MODEL_SRC = """
import os
os.environ.setdefault("FASTNN_PARALLEL_MIN_WORK", "65536")  # before fastnn reads it
import numpy as np
import fastnn
from fastnn import _config, nn
from fastnn import functional as F

N, D, H, C = 256, 512, 256, 10
assert N * H >= _config.PARALLEL_MIN_WORK, "arrays too small for the parallel build"

def build(seed):
    rng = np.random.default_rng(seed)
    model = nn.Sequential([
        nn.Linear(D, H, rng=rng), nn.LayerNorm(H), nn.GELU(), nn.Dropout(0.2, seed=seed),
        nn.Linear(H, H, rng=rng), nn.BatchNorm(H), nn.ReLU(), nn.Dropout(0.1, seed=seed + 1),
        nn.Linear(H, H, rng=rng), nn.SiLU(), nn.Linear(H, C, rng=rng),
    ])
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, C, N)
    return model, x, y

def train(model, x, y, steps):
    loss_fn = nn.SoftmaxCrossEntropy()
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        for p in model.parameters():
            p -= 0.05 * p.grad
        losses.append(loss)
    return np.array(losses), model.state_dict()

def kernels(seed):
    \"\"\"One call of each functional op family, at parallel size.\"\"\"
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(np.float32)
    g, b = np.ones(D, np.float32), np.zeros(D, np.float32)
    out = [F.relu(x), F.gelu(x), F.sigmoid(x), F.tanh(x), F.silu(x), F.leaky_relu(x, 0.1)]
    y, m, r = F.layernorm(x, g, b)
    out += [y, F.layernorm_backward(x, x, m, r, g)[0]]
    y, m, r = F.batchnorm(x, g, b)
    out += [y, F.batchnorm_backward(x, x, m, r, g)[0]]
    loss, probs, t = F.softmax_xent(x, rng.integers(0, D, N))
    out += [np.array(loss), F.softmax_xent_backward(probs, t)]
    y, mask = F.dropout(x, 0.3, seed=seed, step=1)
    out += [y, F.dropout_backward(x, mask, 0.3)]
    return out
"""


# ---------------------------------------------------------------- threads

THREADS_SRC = MODEL_SRC + """
import sys, threading

want = sys.argv[1]
seeds = [0, 1, 2, 3]
backends = ["numba", "numba", "numba", "numpy"]

def job(seed, backend):
    with fastnn.use_backend(backend):
        model, x, y = build(seed)
        losses, state = train(model, x, y, steps=1)
        return [losses] + list(state.values()) + kernels(seed)

def threaded():
    results = [None] * len(seeds)
    errors = []
    start = threading.Barrier(len(seeds))

    def run(i):
        try:
            start.wait()
            results[i] = job(seeds[i], backends[i])
        except BaseException as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results

# The first run starts in threads: the first parallel launches race before
# numba has loaded a threading layer.
runs = [threaded()]
layer = fastnn.threading_info()["numba_threading_layer"]
assert layer == want, f"threading layer {layer}, wanted {want}"
expected = [job(s, b) for s, b in zip(seeds, backends)]
runs.append(threaded())
for results in runs:
    for i, (a, b) in enumerate(zip(expected, results)):
        assert len(a) == len(b)
        for j, (u, v) in enumerate(zip(a, b)):
            assert np.array_equal(u, v), f"job {i} ({backends[i]}), output {j} differs"
print("ok", layer)
"""


def _tbb_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("tbb")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("layer", ["tbb", "omp", "workqueue"])
def test_threads_train_and_call_kernels_concurrently(tmp_path, layer):
    """Four threads train separate models and call every op family at once
    (three on numba, one on the numpy backend via the thread-local
    use_backend): no abort, and results bit-equal to one-after-another runs.
    workqueue is not thread-safe; it only survives thanks to _config's
    launch lock (without it numba terminates the process)."""
    if layer == "tbb" and not _tbb_installed():
        pytest.skip("the tbb package is not installed")
    proc = _run_script(tmp_path, THREADS_SRC, layer, env=_env(FASTNN_THREADING_LAYER=layer))
    assert f"ok {layer}" in _ok(proc)


DEFAULT_LAYER_SRC = """
import numpy as np
import fastnn
from fastnn import _config
x = np.ones((4096, 1024), np.float32)
fastnn.functional.relu(x)
fastnn.functional.sigmoid(x)  # above PARALLEL_MIN_WORK on 2 threads and more
print("layer", fastnn.threading_info()["numba_threading_layer"])
"""


def test_default_threading_layer_is_tbb_where_installed(tmp_path):
    """With the ``tbb`` package installed (a dependency on x86-64), fastnn's
    parallel kernels run on numba's tbb layer, in a virtual environment too,
    where the loader does not search the environment's lib directory (no
    LD_LIBRARY_PATH here); without it, on workqueue."""
    env = _env()
    for k in ("LD_LIBRARY_PATH", "NUMBA_THREADING_LAYER", "FASTNN_THREADING_LAYER", "NUMBA_NUM_THREADS"):
        env.pop(k, None)
    env["NUMBA_NUM_THREADS"] = "2"
    out = _ok(_run_script(tmp_path, DEFAULT_LAYER_SRC, env=env))
    want = "tbb" if _tbb_installed() else "workqueue"
    assert f"layer {want}" in out


def test_check_finite_context_is_per_thread():
    """``with check_finite()`` in one thread neither turns checks on in
    another thread nor leaves them on after interleaved exits."""
    bad = np.array([1.0, np.nan], np.float32)
    entered, checked_other = threading.Barrier(2), threading.Barrier(2)
    outcome = {}

    def checking():
        with fastnn.check_finite():
            entered.wait()
            checked_other.wait()
            try:
                F.relu(bad)
                outcome["checking"] = "no error"
            except FloatingPointError as e:
                outcome["checking"] = str(e)

    def other():
        entered.wait()
        try:
            F.relu(bad)
            outcome["other"] = "no error"
        except FloatingPointError as e:
            outcome["other"] = str(e)
        checked_other.wait()

    threads = [threading.Thread(target=checking), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcome["other"] == "no error"
    assert "relu_forward received" in outcome["checking"]

    # A enters, B enters, A exits, B exits: nothing may stay switched on.
    steps = [threading.Event() for _ in range(3)]

    def a():
        with fastnn.check_finite():
            steps[0].set()
            steps[1].wait(10)
        steps[2].set()

    def b():
        steps[0].wait(10)
        with fastnn.check_finite():
            steps[1].set()
            steps[2].wait(10)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not F._check_finite
    F.relu(bad)  # checks are off again: no error


# ------------------------------------------------------- fork and spawn

PROCESS_SRC = MODEL_SRC + """
import json, multiprocessing as mp, sys

def child(conn, state, disable_guard):
    if disable_guard:
        _config._forked_child = False
    model, x, y = build(0)
    model.load_state_dict(state)
    losses, new_state = train(model, x, y, steps=1)
    conn.send((_config._forked_child, losses, new_state, kernels(5)))
    conn.close()

if __name__ == "__main__":
    method, disable_guard = sys.argv[1], sys.argv[2] == "1"
    model, x, y = build(0)
    train(model, x, y, steps=1)
    kernels(5)
    layer = fastnn.threading_info()["numba_threading_layer"]
    assert not layer.startswith("not started"), "no parallel kernel ran in the parent"
    state = model.state_dict()
    ctx = mp.get_context(method)
    parent_end, child_end = ctx.Pipe(duplex=False)
    p = ctx.Process(target=child, args=(child_end, state, disable_guard))
    p.start()
    child_end.close()
    try:
        got = parent_end.recv()
    except EOFError:
        got = None
    p.join()
    losses, new_state = train(model, x, y, steps=1)
    print(json.dumps({"layer": layer, "exitcode": p.exitcode}))
    if got is not None:
        forked, c_losses, c_state, c_kernels = got
        np.testing.assert_allclose(c_losses, losses, rtol=1e-6)
        for k in new_state:
            np.testing.assert_allclose(c_state[k], new_state[k], rtol=1e-5, atol=1e-6, err_msg=k)
        for i, (u, v) in enumerate(zip(c_kernels, kernels(5))):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6, err_msg=f"kernel output {i}")
        print(json.dumps({"forked_flag": forked, "matched": True}))
"""


def _lines(out: str) -> dict:
    res = {}
    for line in out.splitlines():
        if line.startswith("{"):
            res.update(json.loads(line))
    return res


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_trains_after_parallel_kernels(tmp_path):
    """A child forked after the parent ran parallel kernels trains a step and
    calls every op family; the at-fork hook makes it run the serial builds
    (GNU OpenMP cannot start a parallel region there). The serial builds
    agree with the parent's parallel ones to rounding, not bit for bit."""
    res = _lines(_ok(_run_script(tmp_path, PROCESS_SRC, "fork", 0)))
    assert res["exitcode"] == 0 and res["matched"]
    assert res["forked_flag"] is True


def test_spawn_child_trains_in_parallel(tmp_path):
    """A spawned child starts clean: it runs the parallel builds and matches."""
    res = _lines(_ok(_run_script(tmp_path, PROCESS_SRC, "spawn", 0)))
    assert res["exitcode"] == 0 and res["matched"]
    assert res["forked_flag"] is False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_guard_is_needed(tmp_path):
    """The control for the test above, on the opt-in ``omp`` layer: with the
    at-fork hook undone in the child, GNU OpenMP kills it on its first
    parallel region. If this starts passing cleanly, the guard (and its
    cost: serial kernels in forked children) may no longer be needed."""
    proc = _run_script(tmp_path, PROCESS_SRC, "fork", 1, env=_env(FASTNN_THREADING_LAYER="omp"))
    res = _lines(_ok(proc))
    if res["layer"] != "omp":
        pytest.skip(f"threading layer is {res['layer']}, the abort is specific to GNU OpenMP")
    assert res["exitcode"] != 0, "the child survived a parallel region after fork without the guard"
    assert "fork()" in proc.stderr


# -------------------------------------------------------- read-only install

RO_SRC = """
import json, os, sys, tempfile, warnings
warnings.simplefilter("always")
if sys.argv[1] == "no-tmp":
    # No usable temporary directory either (a locked-down container).
    tempfile.tempdir = sys.argv[2]
pkg = os.path.join(sys.argv[3], "fastnn")
try:
    open(os.path.join(pkg, "probe"), "w").close()
    sys.exit("the package directory is writable: the test does not test anything")
except OSError:
    pass
assert "HOME" not in os.environ and "NUMBA_CACHE_DIR" not in os.environ
with warnings.catch_warnings(record=True) as caught:
    import numpy as np
    import numba
    import fastnn
    from fastnn import nn
    assert fastnn.__file__.startswith(pkg), fastnn.__file__
    rng = np.random.default_rng(0)
    # Unfused: the fused kernel alone takes long to compile without a cache.
    model = nn.Sequential([nn.Linear(8, 16, rng=rng), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 3, rng=rng)],
                          fuse=False)
    loss_fn = nn.SoftmaxCrossEntropy()
    x = rng.standard_normal((5, 8)).astype(np.float32)
    loss = loss_fn(model(x), np.array([0, 1, 2, 0, 1]))
    dx = model.backward(loss_fn.backward())
    assert np.isfinite(loss) and np.isfinite(dx).all()
print(json.dumps({
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    "cache_dir": numba.config.CACHE_DIR,
    "cached": fastnn._config._CACHE,
}))
"""


def _unprivileged_prefix(probe_dir: Path) -> list:
    """A command prefix that runs as a user who cannot write the package copy.
    root ignores file modes, so under root drop to uid 65534 (nobody)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*prefix, sys.executable, "-c", "import numba, numpy"],
                               cwd=probe_dir, capture_output=True, timeout=120)
        if probe.returncode == 0:
            return prefix
    pytest.skip("running as root without a way to run Python as an unprivileged user")


@pytest.fixture
def readonly_install():
    """A copy of the package with every file and directory read-only, and a
    command prefix that makes the mode bits bind."""
    root = Path(tempfile.mkdtemp(prefix="fastnn-ro-"))
    root.chmod(0o755)  # tmp_path's parents are closed to other users
    site = root / "site"
    shutil.copytree(PKG, site / "fastnn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    writable, unwritable = root / "tmp", root / "no-tmp"
    writable.mkdir()
    unwritable.mkdir()
    prefix = _unprivileged_prefix(root)
    if prefix:
        os.chown(writable, 65534, 65534)
    for d in (site, unwritable):
        for path in [d, *d.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOME", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")
           and not k.startswith("FASTNN_")}
    env["PYTHONPATH"] = str(site)
    env["TMPDIR"] = str(writable)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    yield dict(root=root, site=site, writable=writable, unwritable=unwritable, prefix=prefix, env=env)
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    shutil.rmtree(root, ignore_errors=True)


def _run_readonly(ro, mode):
    script = ro["root"] / f"{mode}.py"
    script.write_text(RO_SRC)
    script.chmod(0o444)
    proc = subprocess.run(
        [*ro["prefix"], sys.executable, str(script), mode, ro["unwritable"], ro["site"]],
        env=ro["env"], cwd=ro["site"], capture_output=True, text=True, timeout=TIMEOUT,
    )
    return _lines(_ok(proc)), proc


def test_readonly_install_without_home_caches_in_tmpdir(readonly_install):
    """Read-only package, HOME and NUMBA_CACHE_DIR unset: numba alone raises
    at import ("cannot cache function ...: no locator available");
    _config._setup_cache_dir moves the cache to a private temp directory."""
    res, _ = _run_readonly(readonly_install, "tmp")
    assert res["warnings"] == []
    assert res["cached"] is True
    assert res["cache_dir"].startswith(str(readonly_install["writable"]))
    assert any(readonly_install["writable"].rglob("*.nbi")), "nothing was cached"
    assert not list(readonly_install["site"].rglob("__pycache__"))


def test_readonly_install_with_nothing_writable_warns_once(readonly_install):
    """No writable place at all: one clear warning, kernels compiled without
    a cache, and the forward/backward still runs."""
    res, _ = _run_readonly(readonly_install, "no-tmp")
    assert res["cached"] is False
    assert len(res["warnings"]) == 1, res["warnings"]
    assert "NUMBA_CACHE_DIR" in res["warnings"][0]


def test_shared_tmp_cache_dir_of_another_user_is_refused(tmp_path):
    """In a shared /tmp another user could pre-create fastnn-numba-<uid> and
    plant cache files that numba loads as machine code: such a directory
    (not ours, or writable by others) is not used."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    assert not _config._writable_dir(str(d), private=True)
    d.chmod(0o700)
    assert _config._writable_dir(str(d), private=True)


PROBE_HELPER = """
from .._config import jit_helper

@jit_helper
def probe_value(v):
    return v + {inc}
"""

PROBE_KERNEL = """
from .._config import kernel
from ._probe_helper import probe_value

@kernel
def probe(out, x):
    for i in range(x.shape[0]):
        out[i] = probe_value(x[i])
"""

PROBE_SRC = """
import numpy as np
from fastnn.kernels import _probe_kernel as P
out = np.empty(1)
P.probe(out, np.zeros(1))
print(out[0], sum(P.probe.serial.stats.cache_hits.values()))
"""


def test_cache_follows_helpers_in_other_files(tmp_path):
    """numba checks only a kernel's own file before reusing its cache
    (numba/numba#1833): a kernel calling a helper from another file kept the
    old helper after an edit or an upgrade. _config tags cache entries with
    a hash of all kernel sources."""
    site = tmp_path / "site"
    shutil.copytree(PKG, site / "fastnn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    kdir = site / "fastnn" / "kernels"
    (kdir / "_probe_kernel.py").write_text(PROBE_KERNEL)
    env = _env(PYTHONPATH=str(site))
    env.pop("NUMBA_CACHE_DIR", None)

    def run(inc):
        (kdir / "_probe_helper.py").write_text(PROBE_HELPER.format(inc=inc))
        value, hits = _ok(_run_script(tmp_path, PROBE_SRC, env=env)).split()
        return float(value), int(hits)

    assert run(1.0) == (1.0, 0)
    assert run(1.0) == (1.0, 1)  # cached
    assert run(2.0)[0] == 2.0  # the helper changed: not the stale cached kernel


# ------------------------------------------------------ check-finite mode


def _model(fuse=True, seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential([
        nn.Dropout(0.1, seed=seed), nn.Linear(6, 8, rng=rng), nn.ReLU(), nn.Dropout(0.5, seed=seed),
        nn.Linear(8, 8, rng=rng), nn.LayerNorm(8), nn.Tanh(),
        nn.Linear(8, 8, rng=rng), nn.BatchNorm(8), nn.GELU(),
        nn.Linear(8, 4, rng=rng),
    ], fuse=fuse)


def _step(model, x):
    loss_fn = nn.SoftmaxCrossEntropy()
    loss = loss_fn(model(x), np.array([0, 1, 2, 3, 0, 1]))
    model.backward(loss_fn.backward())
    return loss


def _poison(model, x, where):
    if where == "input":  # the first op of the model is a Dropout
        x[0, 0] = np.inf
    else:
        layer, name = where.split(".")
        getattr(model[int(layer)], name)[(0,) * getattr(model[int(layer)], name).ndim] = np.nan


# (where the NaN/Inf is, the op that must be named, the array it names)
POISON = [
    ("input", r"dropout_forward received", "x"),
    ("1.W", r"linear(_act)?_forward received", "W"),
    ("4.W", r"linear(_act)?_forward received", "W"),
    ("4.b", r"linear(_act)?_forward received", "b"),
    ("5.gamma", r"layernorm_forward produced", "y"),
    ("8.beta", r"batchnorm_forward produced", "y"),
    ("10.W", r"linear(_act)?_forward received", "W"),
]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("where,op,array", POISON, ids=[p[0] for p in POISON])
def test_check_finite_names_first_op(where, op, array, fuse):
    """A NaN/Inf in one layer's parameters or in the input: check mode names
    the first op that received or produced it, and the array; without check
    mode the step runs (NaN propagates silently)."""
    def poisoned():
        model = _model(fuse)
        x = np.random.default_rng(1).standard_normal((6, 6)).astype(np.float32)
        _poison(model, x, where)
        return model, x

    with fastnn.check_finite():
        with pytest.raises(FloatingPointError) as err:
            _step(*poisoned())
    msg = str(err.value)
    assert re.match(op, msg), msg
    assert f"'{array}'" in msg, msg
    # Check mode off: no error, and the NaN reaches the loss (no op swallows it).
    with np.errstate(invalid="ignore", over="ignore"):
        assert not np.isfinite(_step(*poisoned()))


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_check_finite_backward_names_first_op(fuse):
    """A non-finite upstream gradient is reported by the last layer's backward."""
    model = _model(fuse)
    x = np.random.default_rng(1).standard_normal((6, 6)).astype(np.float32)
    out = model(x)
    dout = np.zeros_like(out)
    dout[1, 1] = np.inf
    fastnn.set_check_finite(True)
    try:
        with pytest.raises(FloatingPointError, match=r"^linear(_act)?_backward received"):
            model.backward(dout)
        # Inf in BatchNorm's input gradient: names batchnorm_backward.
        bn = nn.BatchNorm(4)
        bn(np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32))
        with pytest.raises(FloatingPointError, match=r"^batchnorm_backward received a non-finite value in 'dy'"):
            bn.backward(np.full((3, 4), np.nan, np.float32))
    finally:
        fastnn.set_check_finite(False)


def test_check_finite_off_by_default_and_global_switch():
    x = np.array([[np.nan, 1.0]], np.float32)
    assert not F._check_finite
    assert np.isnan(F.relu(x)[0, 0])  # NaN propagates through ReLU
    fastnn.set_check_finite(True)
    try:
        with pytest.raises(FloatingPointError, match="relu_forward received"):
            F.relu(x)
        with fastnn.check_finite(False):  # a block can switch it off
            F.relu(x)
    finally:
        fastnn.set_check_finite(False)
