"""fastnn.checkpoint: round trips, pickle-free and atomic files, mismatch
errors, and bit-exact resumption of training in a fresh process."""

import io
import os
import re
import subprocess
import struct
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import checkpoint, nn, optim
from fastnn.data import synthetic_mnist
from fastnn.train import fit

ROOT = Path(__file__).resolve().parents[1]


def mnist_model(seed=0, hidden=(256, 128), dtype=np.float32):
    fastnn.manual_seed(seed)
    h1, h2 = hidden
    return nn.Sequential([
        nn.Linear(784, h1, dtype=dtype), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(h1, h2, dtype=dtype), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(h2, 10, dtype=dtype),
    ])


def trained(seed=0):
    model = mnist_model(seed)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    X = rng.random((32, 784), dtype=np.float32)
    y = rng.integers(0, 10, 32)
    fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=16, seed=0, progress=False)
    return model, opt


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k


def test_round_trip_model_optimizer_and_extra(tmp_path):
    model, opt = trained()
    path = tmp_path / "ckpt.npz"
    fastnn.save(path, model, opt, epoch=3, seed=7, name="run-1", lrs=[0.1, 0.01], ok=True)
    fresh, fresh_opt = mnist_model(seed=9), None
    fresh_opt = optim.Adam(fresh.parameters(), lr=0.5)
    extra = fastnn.load(path, fresh, fresh_opt)
    assert extra["epoch"] == 3 and extra["seed"] == 7 and extra["name"] == "run-1"
    assert extra["ok"] is True
    np.testing.assert_array_equal(extra["lrs"], [0.1, 0.01])
    assert_same_state(fresh.state_dict(), model.state_dict())
    assert fresh[2].step == model[2].step == 2 and fresh[2].seed == model[2].seed
    assert fresh_opt.lr == 1e-3 and fresh_opt.betas == (0.9, 0.999)
    assert fresh_opt.step_count == opt.step_count == 2
    for a, b in zip(fresh_opt.state, opt.state):
        assert_same_state(a, b)
    # the archive itself needs no pickle and says what it is
    with np.load(path, allow_pickle=False) as z:
        assert "model/0.W" in z.files and "optimizer/state/0/exp_avg" in z.files
        assert str(z["fastnn/optimizer"]) == "Adam"


def test_model_only_and_sgd(tmp_path):
    model, _ = trained()
    path = tmp_path / "model.npz"
    checkpoint.save(path, model)
    fresh = mnist_model(seed=5)
    assert checkpoint.load(path, fresh) == {}
    assert_same_state(fresh.state_dict(), model.state_dict())
    with pytest.raises(ValueError, match="no optimizer state"):
        checkpoint.load(path, fresh, optim.Adam(fresh.parameters()))
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    checkpoint.save(path, model, sgd)
    sgd2 = optim.SGD(fresh.parameters(), lr=0.5, momentum=0.5)
    checkpoint.load(path, fresh, sgd2)
    assert (sgd2.lr, sgd2.momentum, sgd2.nesterov) == (0.1, 0.9, True)


def test_mismatches_are_listed_and_change_nothing(tmp_path):
    model, opt = trained()
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, model, opt)
    other = mnist_model(seed=1, hidden=(128, 128))
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"0\.W: shape \(784, 256\) in the state, \(784, 128\)"):
        checkpoint.load(path, other)
    with pytest.raises(ValueError, match="Adam state does not match"):
        checkpoint.load(path, other, optim.Adam(other.parameters()))
    assert_same_state(other.state_dict(), before)
    with pytest.raises(ValueError, match="holds Adam state, but the optimizer is AdamW"):
        checkpoint.load(path, model, optim.AdamW(model.parameters()))
    f64 = mnist_model(dtype=np.float64)
    with pytest.raises(ValueError, match="dtype float32 in the state, float64"):
        checkpoint.load(path, f64)
    with pytest.raises(ValueError, match=r"unexpected: \['0\.b', '2\.seed'"):
        checkpoint.load(path, nn.Sequential([nn.Linear(784, 256, bias=False)]))
    with pytest.raises(ValueError, match=r"missing: \['1\.W', '1\.b'\]"):
        checkpoint.load(path, nn.Sequential([nn.Linear(784, 256), nn.Linear(256, 10)]))


def test_refuses_pickles_and_foreign_files(tmp_path):
    model = mnist_model()
    evil = tmp_path / "evil.npz"
    np.savez(evil, **{"fastnn/format": np.array(1), "model/0.W": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        checkpoint.load(evil, model)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, W=np.zeros(3))
    with pytest.raises(ValueError, match="not a fastnn checkpoint"):
        checkpoint.load(foreign, model)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        checkpoint.load(garbage, model)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.npz", model)
    with pytest.raises(TypeError, match="None"):
        checkpoint.save(tmp_path / "x.npz", model, note=None)
    with pytest.raises(TypeError, match="numbers"):
        checkpoint.save(tmp_path / "x.npz", model, note={"a": 1})
    assert not (tmp_path / "x.npz").exists()


def small_model(seed=0):
    fastnn.manual_seed(seed)
    return nn.Sequential([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)])


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _rewrite(src, dst, members: dict):
    """Copy the archive ``src`` to ``dst`` with ``members`` (name -> raw bytes) replaced or added."""
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries.update(members)
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    return dst


def _corrupt_deflate(path, member):
    """Overwrite ``member``'s compressed bytes with 0xFF: a deflate block of the invalid type 3."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    raw = bytearray(Path(path).read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    raw[start:start + info.compress_size] = b"\xff" * info.compress_size
    Path(path).write_bytes(bytes(raw))


def test_corrupt_archives_raise_value_error_naming_the_path(tmp_path):
    """Whatever is wrong inside the archive, load raises ValueError (with the
    path) before changing the model or the optimizer."""
    good = tmp_path / "good.npz"
    saved = small_model()
    checkpoint.save(good, saved, optim.Adam(saved.parameters()), epoch=1)
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,, }"  # unbalanced
    header += b" " * (118 - len(header)) + b"\n"
    bad_header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(32)
    unreadable = "not a readable .npz checkpoint"
    bad_format = unreadable + " ('fastnn/format' must be an integer"
    cases = {
        "format_str": ({"fastnn/format.npy": _npy(np.array("abc"))}, bad_format),
        "format_1d": ({"fastnn/format.npy": _npy(np.array([1, 2]))}, bad_format),
        "format_nan": ({"fastnn/format.npy": _npy(np.array(np.nan))}, bad_format),
        "extra_raw": ({"extra/note": b"hello"}, unreadable + " (entry 'extra/note' is not a .npy array)"),
        "model_raw": ({"model/0.W.npy": b"hello"}, unreadable + " (entry 'model/0.W' is not a .npy array)"),
        "bad_header": ({"model/0.W.npy": bad_header}, unreadable),
        "state_key": ({"optimizer/state/x/step.npy": _npy(np.array(1))}, "unexpected entry 'optimizer/state/x/step'"),
        "group_key": ({"optimizer/param_groups/a/lr.npy": _npy(np.array(0.1))},
                      "unexpected entry 'optimizer/param_groups/a/lr'"),
    }
    paths = {name: (_rewrite(good, tmp_path / f"{name}.npz", members), match)
             for name, (members, match) in cases.items()}
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **{"fastnn/format": np.array(1)},
                        **{"model/" + k: v for k, v in saved.state_dict().items()})
    _corrupt_deflate(compressed, "model/0.W.npy")
    paths["compressed"] = (compressed, unreadable)
    target = small_model(seed=1)
    target_opt = optim.Adam(target.parameters())
    before = target.state_dict()
    for name, (path, match) in paths.items():
        with pytest.raises(ValueError, match=re.escape(f"{path}: {match}")):
            checkpoint.load(path, target, target_opt)
        assert_same_state(target.state_dict(), before)
        assert target_opt.step_count == 0
    assert checkpoint.load(good, target, target_opt) == {"epoch": 1}


def test_invalid_optimizer_step_in_a_checkpoint_is_refused(tmp_path):
    model = small_model()
    opt = optim.Adam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.step()
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    checkpoint.save(good, model, opt)
    with zipfile.ZipFile(good) as z:
        steps = [n for n in z.namelist() if n.endswith("/step.npy")]
    assert len(steps) == 4
    _rewrite(good, bad, {n: _npy(np.array(-1)) for n in steps})
    target = small_model(seed=1)
    target_opt = optim.Adam(target.parameters())
    before = target.state_dict()
    with pytest.raises(ValueError, match=re.escape(f"{bad}: Adam state does not match: parameter 0: "
                                                   f"step must be a non-negative integer, got -1")):
        checkpoint.load(bad, target, target_opt)
    assert_same_state(target.state_dict(), before)
    assert target_opt.step_count == 0 and not target_opt.state[0]["exp_avg"].any()


def test_save_is_atomic(tmp_path, monkeypatch):
    model, opt = trained()
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, model, opt, epoch=1)
    good = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, model, opt, epoch=2)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # no temporary file left


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn
    from fastnn import nn, optim
    from fastnn.data import synthetic_mnist

    ckpt, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fastnn.set_num_threads(threads)
    fastnn.manual_seed(12345)  # another init and other Dropout seeds: the checkpoint must restore them
    model = nn.Sequential([
        nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 10),
    ])
    opt = optim.Adam(model.parameters(), lr=0.5)
    extra = fastnn.load(ckpt, model, opt)
    (X, y), _ = synthetic_mnist(n_train=384, n_test=0, seed=3)
    fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=extra["epochs"],
               batch_size=64, seed=extra["seed"], initial_epoch=extra["epoch"], progress=False)
    fastnn.save(out, model, opt)
""")


def test_resume_in_a_fresh_process_is_bit_exact(tmp_path):
    assert fastnn.get_backend() == "numba"
    (X, y), _ = synthetic_mnist(n_train=384, n_test=0, seed=3)

    def start():
        model = mnist_model(seed=0)
        return model, optim.Adam(model.parameters(), lr=1e-3)

    loss = nn.SoftmaxCrossEntropy()
    straight, straight_opt = start()
    fit(straight, loss, straight_opt, X, y, epochs=2, batch_size=64, seed=11, progress=False)

    half, half_opt = start()
    fit(half, loss, half_opt, X, y, epochs=1, batch_size=64, seed=11, progress=False)
    ckpt, out = tmp_path / "epoch1.npz", tmp_path / "epoch2.npz"
    fastnn.save(ckpt, half, half_opt, epoch=1, epochs=2, seed=11)

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, str(ckpt), str(out), str(fastnn.get_num_threads())],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr

    resumed = mnist_model(seed=99)
    resumed_opt = optim.Adam(resumed.parameters())
    checkpoint.load(out, resumed, resumed_opt)
    assert_same_state(resumed.state_dict(), straight.state_dict())
    assert resumed_opt.step_count == straight_opt.step_count == 12
    for a, b in zip(resumed_opt.state, straight_opt.state):
        assert_same_state(a, b)


def _stale_temporaries(directory, name="ckpt.npz"):
    return sorted(f for f in os.listdir(directory) if f.startswith("." + name + ".") and f.endswith(".tmp"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_9_during_save_leaves_a_loadable_checkpoint_and_the_next_save_cleans_up(tmp_path):
    import signal
    import time

    model, opt = trained()
    big = {"weights": np.arange(2_000_000, dtype=np.float32)}  # a save that takes a while to write
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, model, opt, epoch=0)
    rng = np.random.default_rng(0)
    kills, stale_seen, last_epoch = 20, set(), 0
    for k in range(kills):
        pid = os.fork()
        if pid == 0:  # the child saves in a loop until killed
            try:
                while True:
                    checkpoint.save(path, model, opt, epoch=k, **big)
            finally:
                os._exit(1)
        time.sleep(float(rng.uniform(0.0, 0.2)))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        stale_seen.update(_stale_temporaries(tmp_path))
        fresh = mnist_model(seed=9)
        fresh_opt = optim.Adam(fresh.parameters(), lr=0.5)
        extra = fastnn.load(path, fresh, fresh_opt)  # the old checkpoint or a complete new one
        assert extra["epoch"] in (last_epoch, k)
        last_epoch = extra["epoch"]
        assert_same_state(fresh.state_dict(), model.state_dict())
    # the kills must have hit saves in progress, or this test checked nothing
    assert len(stale_seen) >= 5, stale_seen
    checkpoint.save(path, model, opt, epoch=99)
    assert _stale_temporaries(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
    assert fastnn.load(path, mnist_model(seed=9))["epoch"] == 99


def test_save_keeps_temporaries_of_live_writers(tmp_path):
    model, _ = trained()
    path = tmp_path / "ckpt.npz"
    host = checkpoint._host_tag()
    live = tmp_path / f".ckpt.npz.{host}.{os.getppid()}.abc123.tmp"  # our parent runs
    other_host = tmp_path / f".ckpt.npz.{host}x.999999999.abc123.tmp"
    other_file = tmp_path / ".other.npz.x.1.abc.tmp"
    for f in (live, other_host, other_file):
        f.write_bytes(b"in progress")
    checkpoint.save(path, model)
    assert live.exists() and other_host.exists() and other_file.exists()
