"""fastnn.lr_scheduler (also fastnn.optim.lr_scheduler): the schedules
against their formulas and PyTorch's, ReduceLROnPlateau's rule, state round
trips, and fit(scheduler=...)."""

import math

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim
from fastnn.optim import lr_scheduler as S


def sgd(lr=0.1):
    return optim.SGD([nn.Parameter(np.zeros(3, np.float32))], lr=lr)


def lrs(sched, epochs, metrics=None):
    out = []
    for e in range(epochs):
        out.append(sched.get_last_lr()[0])
        sched.step() if metrics is None else sched.step(metrics[e])
    return out


def torch_lrs(make, epochs, metrics=None):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    sched = make(torch.optim.lr_scheduler, opt)
    out = []
    for e in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step() if metrics is None else sched.step(metrics[e])
    return out


def test_reexported_from_optim():
    assert fastnn.optim.lr_scheduler is fastnn.lr_scheduler


def test_step_lr_formula_and_pytorch():
    got = lrs(S.StepLR(sgd(), step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose(got, [0.1 * 0.5 ** (e // 3) for e in range(10)])
    np.testing.assert_allclose(got, torch_lrs(lambda m, o: m.StepLR(o, 3, gamma=0.5), 10), rtol=1e-12)


def test_cosine_matches_pytorch_and_holds_at_eta_min():
    got = lrs(S.CosineAnnealingLR(sgd(), T_max=8, eta_min=0.01), 12)
    want = torch_lrs(lambda m, o: m.CosineAnnealingLR(o, T_max=8, eta_min=0.01), 9)
    np.testing.assert_allclose(got[:9], want, rtol=1e-9)
    assert got[8:] == pytest.approx([0.01] * 4)


def test_cosine_warmup_rises_linearly_then_anneals():
    # eta_min > 0: today's optimizers refuse lr = 0
    got = lrs(S.CosineAnnealingLR(sgd(), T_max=10, eta_min=1e-3, warmup_epochs=4, warmup_start_factor=0.2), 11)
    np.testing.assert_allclose(got[:5], [0.1 * (0.2 + 0.8 * e / 4) for e in range(5)])
    np.testing.assert_allclose(got[4:], [1e-3 + 0.099 * (1 + math.cos(math.pi * t / 6)) / 2
                                         for t in range(7)], atol=1e-15)


def test_reduce_on_plateau_matches_pytorch():
    metrics = [1.0, 0.9, 0.9, 0.9, 0.95, 0.9] + [0.8] * 14
    kw = dict(factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    got = lrs(S.ReduceLROnPlateau(sgd(), **kw), len(metrics), metrics)
    want = torch_lrs(lambda m, o: m.ReduceLROnPlateau(o, **kw), len(metrics), metrics)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert min(got) == pytest.approx(0.02) and got[0] == 0.1


def test_reduce_on_plateau_counts_nan_as_no_improvement():
    sched = S.ReduceLROnPlateau(sgd(), patience=0)
    sched.step(1.0)
    with pytest.warns(RuntimeWarning, match="nan"):
        sched.step(float("nan"))
    assert sched.get_last_lr() == [pytest.approx(0.01)] and sched.best == 1.0


def test_param_groups_are_what_schedules_change():
    """With PyTorch-shaped parameter groups, each group keeps its own base rate."""
    class Grouped:
        def __init__(self):
            self.param_groups = [{"params": [], "lr": 0.1}, {"params": [], "lr": 0.01}]

        def step(self):
            pass

    opt = Grouped()
    sched = S.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.005] == sched.get_last_lr()


def test_state_dict_round_trip():
    a = S.CosineAnnealingLR(sgd(), T_max=10, eta_min=1e-3, warmup_epochs=2)
    for _ in range(4):
        a.step()
    opt = sgd()
    b = S.CosineAnnealingLR(opt, T_max=10, eta_min=1e-3, warmup_epochs=2)
    b.load_state_dict(a.state_dict())
    assert b.last_epoch == 4 and opt.lr == pytest.approx(a.get_last_lr()[0])
    b.step()
    a.step()
    assert b.get_last_lr() == a.get_last_lr()


def test_bad_arguments():
    with pytest.raises(ValueError, match="step_size"):
        S.StepLR(sgd(), step_size=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        S.CosineAnnealingLR(sgd(), T_max=3, warmup_epochs=3)
    with pytest.raises(ValueError, match="factor"):
        S.ReduceLROnPlateau(sgd(), factor=1.5)
    with pytest.raises(TypeError, match="param_groups or lr"):
        S.StepLR(object(), step_size=1)


def test_fit_steps_the_schedule_each_epoch():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = nn.Sequential([nn.Linear(4, 2)])
    opt = optim.SGD(model.parameters(), lr=0.4)
    hist = fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=5, progress=False,
                      scheduler=S.StepLR(opt, step_size=2, gamma=0.5))
    assert hist["lr"] == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1])
    opt = optim.SGD(model.parameters(), lr=0.4)
    plateau = S.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=10.0, monitor="loss")
    hist = fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=3, progress=False,
                      scheduler=plateau)
    assert hist["lr"] == pytest.approx([0.4, 0.4, 0.2])  # the first sets the best; none beats it 10x
    with pytest.raises(ValueError, match="monitor 'val_loss' is not recorded"):
        fastnn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, progress=False,
                   scheduler=S.ReduceLROnPlateau(opt, monitor="val_loss"))


def test_cosine_to_zero_keeps_training():
    """eta_min = 0 (the default) reaches lr 0 at T_max; the optimizer takes
    it (as PyTorch's does) and a step there changes nothing."""
    p = nn.Parameter(np.ones(3, np.float32))
    opt = optim.SGD([p], lr=0.1)
    sched = S.CosineAnnealingLR(opt, T_max=2)
    for _ in range(2):
        p.grad[...] = 1.0
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    before = np.array(p)
    opt.step()
    np.testing.assert_array_equal(before, p)
