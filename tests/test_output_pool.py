"""fastnn._memory's output pool: large outputs reuse the memory of dead ones,
never the memory of a live array or of a view of one."""

import gc
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import _memory
from fastnn import functional as F
from fastnn import nn

BIG = (4096, 1024)  # 32 MiB in float64: pooled
SMALL = (1024, 1024)  # 8 MiB: not pooled
MIB = 1 << 20


@pytest.fixture
def pool():
    """A fresh pool in place of the process's one, restored afterwards."""
    old = _memory.OUTPUT_POOL
    _memory.OUTPUT_POOL = _memory.OutputPool()
    try:
        yield _memory.OUTPUT_POOL
    finally:
        _memory.OUTPUT_POOL = old


@pytest.fixture
def small_pool():
    """A pool of its own from 1 MiB up, for tests of its bookkeeping."""
    return _memory.OutputPool(min_bytes=MIB)


def _x(shape=BIG, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_a_dead_output_is_reused_by_the_next_one(pool):
    x = _x()
    y = F.relu(x)
    addr = y.ctypes.data
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    del y
    y2 = F.relu(-x)
    assert y2.ctypes.data == addr
    np.testing.assert_array_equal(y2, np.maximum(-x, 0))
    assert pool.info()["reused"] == 1 and pool.info()["allocated"] == 1


def test_a_view_keeps_its_memory_out_of_the_pool(pool):
    x = _x()
    y = F.relu(x)
    view = y[::3, 5:]
    expected = view.copy()
    del y
    gc.collect()
    assert pool.info()["idle_blocks"] == 0
    others = [F.relu(-x) for _ in range(3)]  # would reuse the block if it were free
    assert not any(np.may_share_memory(view, o) for o in others)
    np.testing.assert_array_equal(view, expected)
    del view
    assert pool.info()["idle_blocks"] == 1


def test_live_outputs_never_share_memory(pool):
    x = _x()
    outs = []
    for i in range(6):
        outs.append(F.relu(x))
        if i % 2:
            outs.pop(0)  # free one now and then, so that blocks are reused
    for i, a in enumerate(outs):
        for b in outs[i + 1:]:
            assert not np.may_share_memory(a, b)


def test_pooled_outputs_are_ordinary_arrays(pool):
    a = _memory.empty(BIG, np.dtype(np.float64))
    assert type(a) is np.ndarray and a.shape == BIG and a.dtype == np.float64
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    assert a.ctypes.data % _memory.PAGE == _memory.POOL_PAGE_OFFSET
    a[...] = 1.5
    del a
    b = _memory.empty((4 * BIG[0], BIG[1]), np.dtype(np.uint16))  # same bytes, another dtype
    assert b.shape == (4 * BIG[0], BIG[1]) and b.dtype == np.uint16
    assert pool.info()["reused"] == 1


def test_small_outputs_bypass_the_pool(pool):
    y = F.relu(_x(SMALL))
    assert y.flags.owndata
    del y
    info = pool.info()
    assert (info["idle_blocks"], info["reused"], info["allocated"]) == (0, 0, 0)


def test_idle_memory_stays_within_the_limit_least_recent_freed_first(small_pool):
    pool = small_pool
    pool.set_max_idle_bytes(3 * 8 << 20)
    arrays = [pool.empty((1024, 1024 + k), np.dtype(np.float64)) for k in range(5)]
    sizes = [a.nbytes for a in arrays]
    for k in (4, 0, 2, 1, 3):  # freed in this order
        arrays[k] = None
    info = pool.info()
    assert info["idle_bytes"] <= 3 * 8 << 20 and info["idle_blocks"] == 2
    assert sorted(n for n, blocks in pool._idle.items() for _ in blocks) == sorted([sizes[1], sizes[3]])


def test_limit_zero_turns_the_pool_off():
    before = fastnn.output_pool_info()["max_idle_bytes"]
    try:
        fastnn.set_output_pool_limit(0)
        assert fastnn.output_pool_info()["idle_bytes"] == 0
        y = F.relu(_x())
        assert y.flags.owndata
    finally:
        fastnn.set_output_pool_limit(before)
    assert fastnn.output_pool_info()["max_idle_bytes"] == before


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True, None])
def test_limit_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="max_idle_bytes"):
        fastnn.set_output_pool_limit(bad)


@pytest.mark.parametrize("text, expected", [("0", 0), ("1.5", 3 << 19), ("256", 256 << 20)])
def test_limit_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("FASTNN_OUTPUT_POOL_MB", text)
    assert _memory._idle_limit_from_environment() == expected


@pytest.mark.parametrize("text", ["-1", "lots", "nan", ""])
def test_a_bad_limit_in_the_environment_is_named(monkeypatch, text):
    monkeypatch.setenv("FASTNN_OUTPUT_POOL_MB", text)
    with pytest.raises(ValueError, match="FASTNN_OUTPUT_POOL_MB"):
        _memory._idle_limit_from_environment()


def test_threads_allocating_and_freeing_never_share_a_live_block(small_pool):
    """Each thread fills its array with its own value and checks it after the
    others had time to allocate: a block handed out twice would show."""
    errors = []

    def work(tag):
        try:
            for _ in range(30):
                a = pool.empty((256, 1024 + tag), np.dtype(np.float64) if tag % 2 else np.dtype(np.float32))
                a.fill(tag)
                b = pool.empty((256, 1024), np.dtype(np.float64))
                b.fill(-tag)
                if not ((a == tag).all() and (b == -tag).all()):
                    errors.append(tag)
                del a, b
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    pool = small_pool
    threads = [threading.Thread(target=work, args=(t,)) for t in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert pool.info()["reused"] > 0


def test_module_outputs_held_together_are_distinct_and_right(pool):
    """A training loop that holds the forward's output while the backward
    allocates: both outputs come from the pool and hold their own values."""
    x, dy = _x(seed=1), _x(seed=2)
    m = nn.BatchNorm(BIG[1], dtype=np.float64)
    for _ in range(3):
        y, dx = m.forward(x), m.backward(dy)
        assert not np.may_share_memory(y, dx)
        y_ref, mean, rstd = F.batchnorm(x, m.gamma, m.beta, backend="numpy")
        dx_ref = F.batchnorm_backward(dy, x, mean, rstd, m.gamma, backend="numpy")[0]
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    assert pool.info()["reused"] > 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_holds_the_lock_can_allocate():
    held, release = threading.Event(), threading.Event()

    def hold():
        with _memory.OUTPUT_POOL._lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(30)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # forking a threaded process
            pid = os.fork()
        if pid == 0:  # the child: the holder thread does not exist here
            code = 1
            try:
                a = _memory.empty(BIG, np.dtype(np.float64))
                a.fill(2.0)
                code = 0 if a.sum() == 2.0 * a.size else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung on the pool's lock")
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        t.join()


def test_pooled_outputs_pickle_copy_and_save_as_arrays(pool, tmp_path):
    import copy
    import pickle

    a = _memory.empty(BIG, np.dtype(np.float64))
    a[...] = np.arange(BIG[1])
    for b in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        np.testing.assert_array_equal(b, a)
        assert not np.may_share_memory(a, b)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), a)
    with pytest.raises(ValueError):
        a.resize((10,))  # it does not own its memory (README, Guarantees)


def test_an_array_exported_to_another_library_keeps_its_block(pool):
    """A consumer of the buffer protocol (here a memoryview; torch.from_numpy
    holds the array the same way) keeps the block out of the pool."""
    a = F.relu(_x())
    view = memoryview(a)
    del a
    gc.collect()
    assert pool.info()["idle_blocks"] == 0
    view.release()
    del view
    assert pool.info()["idle_blocks"] == 1
