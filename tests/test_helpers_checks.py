"""Argument checks of the training helpers, callbacks, schedules and
settings (fuzzing findings): bad values are refused with an error naming
the argument, before anything changes; what was silently wrong is right."""

import math

import numpy as np
import pytest

import fastnn
from fastnn import callbacks as C
from fastnn import distributed, nn, optim
from fastnn import regularization as R
from fastnn import train as TR
from fastnn.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau, StepLR

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 4)).astype(np.float32)
Y = np.arange(16) % 3


def mlp(dtype=np.float32):
    return nn.Sequential([nn.Linear(4, 8, dtype=dtype), nn.ReLU(), nn.Linear(8, 3, dtype=dtype)])


def weights(model):
    return [np.array(p) for p in model.parameters()]


# ------------------------------------------------------------------ gradcheck


def test_gradcheck_eval_mode_on_a_sequential():
    fastnn.manual_seed(0)
    x = X[:6].astype(np.float64)
    inner = nn.Sequential([nn.Linear(5, 4, dtype=np.float64), nn.Tanh()])
    # smooth activations: no kink to cross
    model = nn.Sequential([nn.Linear(4, 5, dtype=np.float64), nn.Sigmoid(), nn.Dropout(0.3), inner,
                           nn.LayerNorm(4, dtype=np.float64), nn.Linear(4, 3, dtype=np.float64)])
    assert TR.gradcheck(model, x, training=False) < 1e-6
    assert TR.gradcheck(model, x, Y[:6], nn.SoftmaxCrossEntropy(), training=False) < 1e-6
    assert not fastnn.functional._check_finite  # the check mode used inside is left off


def test_gradcheck_eval_mode_still_finds_a_wrong_gradient():
    class DoubleGradLinear(nn.Linear):
        def backward(self, dout, need_dx=True):
            dx = super().backward(dout, need_dx)
            self.W.grad *= 2
            return dx

    model = nn.Sequential([nn.Linear(4, 5, dtype=np.float64), nn.ReLU(), DoubleGradLinear(5, 3, dtype=np.float64)])
    assert TR.gradcheck(model, X[:6].astype(np.float64), training=False) > 0.1


def test_gradcheck_eval_mode_refuses_batchnorm():
    model = nn.Sequential([nn.Linear(4, 5), nn.BatchNorm(5)])
    with pytest.raises(ValueError, match=r"training=False.*BatchNorm.*training=True"):
        TR.gradcheck(model, X[:6].astype(np.float64), training=False)


@pytest.mark.parametrize("seed, exc", [(-1, ValueError), ("a", TypeError), (1.5, TypeError)])
def test_gradcheck_names_a_bad_seed(seed, exc):
    with pytest.raises(exc, match=r"\bseed\b"):
        TR.gradcheck(nn.Linear(4, 3), X[:4].astype(np.float64), seed=seed)


# ------------------------------------------------------- overfit_single_batch


def test_overfit_single_batch_refuses_a_foreign_optimizer():
    model, other = mlp(), mlp()
    before = weights(model)
    with pytest.raises(ValueError, match="not this model's"):
        TR.overfit_single_batch(model, nn.SoftmaxCrossEntropy(), X, Y, steps=5,
                                optimizer=optim.Adam(other.parameters(), lr=0.05))
    with pytest.raises(TypeError, match=r"optimizer must have \.step\(\)"):
        TR.overfit_single_batch(model, nn.SoftmaxCrossEntropy(), X, Y, steps=5, optimizer="adam")
    for a, b in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, b)
    loss = TR.overfit_single_batch(model, nn.SoftmaxCrossEntropy(), X, Y, steps=50,
                                   optimizer=optim.Adam(model.parameters(), lr=0.05))
    assert loss < 0.5


# ------------------------------------------------------------------ callbacks


@pytest.mark.parametrize("min_delta, exc", [(float("nan"), ValueError), (-1.0, ValueError),
                                            (float("inf"), ValueError), ("x", TypeError)])
def test_checkpoint_min_delta_is_checked(tmp_path, min_delta, exc):
    with pytest.raises(exc, match="min_delta"):
        C.ModelCheckpoint(tmp_path / "a.npz", monitor="loss", min_delta=min_delta)


@pytest.mark.parametrize("monitor", [5, None])
def test_checkpoint_monitor_must_be_a_name(tmp_path, monitor):
    with pytest.raises(TypeError, match=r"\bmonitor must be a history key"):
        C.ModelCheckpoint(tmp_path / "a.npz", monitor=monitor)


@pytest.mark.parametrize("path", ["missing/a.npz", "."])
def test_checkpoint_unwritable_path_fails_before_training(tmp_path, path):
    path = tmp_path / path
    model = mlp()
    before = weights(model)
    with pytest.raises(OSError, match="ModelCheckpoint") as info:
        fastnn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, Y,
                   epochs=2, progress=False, callbacks=[C.ModelCheckpoint(path, monitor="loss")])
    assert info.value.filename == str(path)
    for a, b in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, b)


def test_csv_logger_unwritable_path_fails_before_training(tmp_path):
    model = mlp()
    with pytest.raises(FileNotFoundError, match="CSVLogger"):
        fastnn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, Y,
                   epochs=1, progress=False, callbacks=[C.CSVLogger(tmp_path / "no" / "log.csv")])


@pytest.mark.parametrize("sep, exc", [("", ValueError), (";;", ValueError), (5, TypeError)])
def test_csv_logger_separator_is_checked_at_construction(tmp_path, sep, exc):
    with pytest.raises(exc, match="separator"):
        C.CSVLogger(tmp_path / "log.csv", separator=sep)


def test_csv_logger_other_separator_still_works(tmp_path):
    model = mlp()
    path = tmp_path / "log.csv"
    fastnn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, Y,
               epochs=2, progress=False, callbacks=[C.CSVLogger(path, separator=";")])
    assert path.read_text().splitlines()[0] == "epoch;accuracy;loss;lr"


@pytest.mark.parametrize("make", [
    lambda p: TR.EarlyStopping(restore_best_weights="no"),
    lambda p: C.ModelCheckpoint(p, save_best_only="no"),
    lambda p: C.ModelCheckpoint(p, save_optimizer=1),
    lambda p: C.CSVLogger(p, append="false"),
], ids=["restore_best_weights", "save_best_only", "save_optimizer", "append"])
def test_flags_refuse_non_bools(tmp_path, make):
    with pytest.raises(TypeError, match=r"(restore_best_weights|save_best_only|save_optimizer|append) "
                                        r"must be True or False"):
        make(tmp_path / "a.npz")
    assert TR.EarlyStopping(restore_best_weights=np.bool_(False)).restore_best_weights is False


@pytest.mark.parametrize("value", ["false", None, float("nan"), 1])
def test_set_check_finite_refuses_non_bools(value):
    with pytest.raises(TypeError, match=r"\benabled must be True or False"):
        fastnn.set_check_finite(value)
    assert not fastnn.functional._check_finite
    with pytest.raises(TypeError, match=r"\benabled must be True or False"):
        with fastnn.check_finite(value):
            pass
    assert not fastnn.functional._check_finite and fastnn.functional._finite_blocks == 0


# ------------------------------------------------------------- regularization


def _p(grad):
    p = nn.Parameter(np.ones(4, np.float32))
    p.grad = grad
    return p


@pytest.mark.parametrize("grad, exc", [
    (np.zeros((2, 4), np.float32), ValueError), (np.zeros(1, np.float32), ValueError),
    (np.zeros(4, np.float64), ValueError), ([0.0] * 4, ValueError), (np.zeros(4, np.int32), ValueError),
], ids=["2d", "short", "float64", "list", "int32"])
def test_add_l2_grad_checks_every_grad_before_changing_any(grad, exc):
    good = _p(np.zeros(4, np.float32))
    with pytest.raises(exc, match=r"params\[1\]\.grad must be an array of the parameter's shape"):
        R.add_l2_grad([good, _p(grad)], 0.1)
    np.testing.assert_array_equal(good.grad, 0)


def test_grad_helpers_refuse_integer_and_read_only_grads():
    p = nn.Parameter(np.ones(4, np.int32))  # an integer grad would be truncated (clip_grad_norm: to 0)
    p.grad = np.full(4, 5, np.int32)
    for fn in (lambda: R.clip_grad_norm([p], 1.0), lambda: R.clip_grad_value([p], 1.0),
               lambda: R.add_l2_grad([p], 0.1)):
        with pytest.raises(TypeError, match=r"params\[0\]\.grad must be a float array"):
            fn()
    np.testing.assert_array_equal(p.grad, 5)
    q = _p(np.ones(4, np.float32))
    q.grad.flags.writeable = False
    for fn in (lambda: R.clip_grad_norm([q], 0.1), lambda: R.clip_grad_value([q], 0.5),
               lambda: R.add_l2_grad([q], 0.1)):
        with pytest.raises(ValueError, match=r"params\[0\]\.grad is read-only"):
            fn()


# ----------------------------------------------------------------- schedules


def _grouped(lrs=(0.1,)):
    model = mlp()
    ps = model.parameters()
    return ps, optim.Adam(ps[:2], lr=lrs[0])


def test_a_group_added_later_is_scheduled_from_its_own_rate():
    ps, opt = _grouped()
    sched = StepLR(opt, 1, gamma=0.5)
    sched.step()
    opt.add_param_group({"params": ps[2:], "lr": 0.01})  # joins at epoch 1
    sched.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0125, 0.0025])
    assert sched.get_last_lr() == pytest.approx([0.0125, 0.0025])
    state = sched.state_dict()
    assert state["starts"] == [0, 1]


def test_a_group_added_later_follows_cosine_and_plateau():
    ps, opt = _grouped()
    sched = CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    opt.add_param_group({"params": ps[2:], "lr": 0.02})
    lrs = []
    for _ in range(4):
        sched.step()
        lrs.append(sched.get_last_lr())
    np.testing.assert_allclose([lr[1] for lr in lrs], [lr[0] / 5 for lr in lrs], atol=1e-15)
    ps, opt = _grouped()
    plateau = ReduceLROnPlateau(opt, patience=0, factor=0.5)
    plateau.step(1.0)
    opt.add_param_group({"params": ps[2:], "lr": 0.02})
    plateau.step(2.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.01]) == plateau.get_last_lr()


def test_step_lr_overflow_is_a_named_error_and_changes_nothing():
    _, opt = _grouped()
    sched = StepLR(opt, 1, gamma=1e100)
    sched.step()
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match=r"gamma=1e\+100"):
        sched.step()
    assert sched.last_epoch == 3 and opt.param_groups[0]["lr"] == pytest.approx(1e299)


def _state(**changes):
    _, opt = _grouped()
    s = StepLR(opt, 2)
    s.step()
    return {**s.state_dict(), **changes}


@pytest.mark.parametrize("state, exc, match", [
    (None, TypeError, "state must be a dict"),
    (_state(step_size=0), ValueError, "step_size"),
    (_state(gamma="a"), TypeError, "gamma"),
    (_state(_last_lr=[-5.0]), ValueError, r"_last_lr'\]\[0\]"),
    (_state(_last_lr=[float("nan")]), ValueError, "_last_lr"),
    (_state(base_lrs=[0.1, 0.1]), ValueError, "2 rates; this optimizer has 1"),
    (_state(last_epoch=-1), ValueError, "last_epoch"),
    ({k: v for k, v in _state().items() if k != "_last_lr"}, ValueError, r"missing keys \['_last_lr'\]"),
    ({k: v for k, v in _state().items() if k != "base_lrs"}, ValueError, r"missing keys \['base_lrs'\]"),
], ids=["none", "step_size", "gamma", "neg_lr", "nan_lr", "groups", "last_epoch", "no_last_lr",
        "no_base_lrs"])
def test_scheduler_load_state_dict_checks_before_changing(state, exc, match):
    _, opt = _grouped()
    sched = StepLR(opt, 3, gamma=0.5)
    before = dict(sched.state_dict())
    with pytest.raises(exc, match=match):
        sched.load_state_dict(state)
    assert sched.state_dict() == before and opt.param_groups[0]["lr"] == 0.1


def test_scheduler_load_state_dict_refuses_another_kind():
    _, opt = _grouped()
    with pytest.raises(ValueError, match="not a CosineAnnealingLR state"):
        CosineAnnealingLR(opt, 5).load_state_dict(StepLR(opt, 2).state_dict())
    state = _state()
    del state["starts"]  # saved before groups could join later
    sched = StepLR(opt, 1)
    sched.load_state_dict(state)
    assert sched.step_size == 2 and sched.starts == [0]


# ------------------------------------------------------ settings, distributed


def test_fit_checks_comm_first():
    model = mlp()
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fastnn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X, Y,
                   epochs=1, progress=False, comm=5)


@pytest.mark.parametrize("args, exc, match", [
    ((0, 10, 0, 0), ValueError, "size must be positive"),
    ((0, 10, 5, 2), ValueError, r"rank must be in \[0, 2\)"),
    ((0, 10, -1, 2), ValueError, "rank"),
    ((10, 0, 0, 2), ValueError, "stop"),
    ((0, 10.0, 0, 2), TypeError, "stop must be an int"),
])
def test_share_checks_its_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        distributed.share(*args)
    assert distributed.share(np.int64(0), 10, 1, 2) == (5, 10)


def test_set_num_threads_checks_and_caps():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = fastnn.get_num_threads()
    blas_before = [d["num_threads"] for d in fastnn.threading_info()["blas"]]
    top = __import__("numba").config.NUMBA_NUM_THREADS
    try:
        with pytest.raises(TypeError, match=r"\bblas must be True or False"):
            fastnn.set_num_threads(1, blas="x")
        assert fastnn.get_num_threads() == before
        fastnn.set_num_threads(2**70, blas=False)
        assert fastnn.get_num_threads() == top
        fastnn.set_num_threads(np.int64(1), blas=False)
        assert fastnn.get_num_threads() == 1
        fastnn.set_num_threads(10**6)
        assert fastnn.get_num_threads() == top
        blas = fastnn.threading_info()["blas"]
        assert all(d["num_threads"] <= top for d in blas)
    finally:
        fastnn.set_num_threads(before, blas=False)
        if blas_before:
            threadpoolctl.threadpool_limits(max(blas_before), user_api="blas")


def test_non_module_appended_to_sequential_is_refused():
    model = mlp()
    model(X)
    model.layers.append("relu")
    for training in (True, False):
        with pytest.raises(TypeError, match=r"layers\[3\] must be a fastnn Module, got str"):
            model(X, training=training)
    model.layers[3] = nn.ReLU()
    assert model(X).shape == (16, 3)


def test_monitor_checks_directly():
    with pytest.raises(TypeError, match="name must be a history key"):
        C.Monitor(5)
    with pytest.raises(ValueError, match="min_delta"):
        C.Monitor("loss", min_delta=math.nan)


AVX512 = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}


@pytest.mark.parametrize("arch, flags, core", [
    ("Haswell", AVX512, "SkylakeX"),
    ("Zen", AVX512 | {"avx512_bf16"}, "SkylakeX"),
    ("Haswell", {"avx2", "avx512f"}, None),  # not the AVX-512 subsets the kernels need
    ("SkylakeX", AVX512, None),
    ("COOPERLAKE", AVX512 | {"avx512_bf16"}, None),
    ("Haswell", {"avx2", "fma"}, None),
])
def test_core_type_note_names_the_avx512_kernels_only_where_they_apply(arch, flags, core):
    from fastnn._blas import core_type_note

    note = core_type_note([{"internal_api": "openblas", "architecture": arch}], flags)
    if core is None:
        assert note is None
    else:
        assert f"OPENBLAS_CORETYPE={core}" in note and arch in note


def test_core_type_note_ignores_other_blas_libraries():
    from fastnn._blas import core_type_note

    assert core_type_note([{"internal_api": "mkl", "architecture": None}], AVX512) is None
    assert core_type_note([], AVX512) is None
    assert "blas_note" in fastnn.threading_info()
