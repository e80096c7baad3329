"""fastnn.to_torch / fastnn.from_torch: same outputs both ways, the same SGD step, refusals."""

import numpy as np
import pytest

import fastnn
from fastnn import nn, optim

torch = pytest.importorskip("torch")
tnn = torch.nn


def fastnn_model(dropout=True, seed=0, dtype=np.float32):
    fastnn.manual_seed(seed)
    layers = [
        nn.Linear(20, 32, dtype=dtype), nn.BatchNorm(32, eps=1e-3, momentum=0.2, dtype=dtype), nn.ReLU(),
        nn.Linear(32, 24, dtype=dtype), nn.LeakyReLU(0.2), nn.Dropout(0.3),
        nn.Linear(24, 24, dtype=dtype), nn.Sigmoid(),
        nn.Linear(24, 16, dtype=dtype), nn.Tanh(),
        nn.Linear(16, 16, dtype=dtype), nn.GELU(), nn.LayerNorm(16, eps=1e-4, dtype=dtype),
        nn.Linear(16, 12, bias=False, dtype=dtype), nn.SiLU(),
        nn.Linear(12, 5, dtype=dtype),
    ]
    model = nn.Sequential([m for m in layers if dropout or not isinstance(m, nn.Dropout)])
    rng = np.random.default_rng(seed)
    for _ in range(3):
        model.forward(rng.normal(1.0, 2.0, (64, 20)).astype(dtype))
    for p in model.parameters():
        p += rng.normal(0, 0.1, p.shape).astype(dtype)
    return model


def torch_model(seed=0, dropout=True):
    torch.manual_seed(seed)
    layers = [
        tnn.Linear(20, 32), tnn.BatchNorm1d(32, eps=1e-3, momentum=0.2), tnn.ReLU(),
        tnn.Linear(32, 24), tnn.LeakyReLU(0.2), tnn.Dropout(0.3),
        tnn.Linear(24, 24), tnn.Sigmoid(),
        tnn.Linear(24, 16), tnn.Tanh(),
        tnn.Linear(16, 16), tnn.GELU(approximate="tanh"), tnn.LayerNorm(16, eps=1e-4),
        tnn.Linear(16, 12, bias=False), tnn.SiLU(),
        tnn.Linear(12, 5),
    ]
    model = tnn.Sequential(*[m for m in layers if dropout or not isinstance(m, tnn.Dropout)])
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, 20) * 2 + 1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def batch(n=37, seed=1):
    return np.random.default_rng(seed).normal(1.0, 2.0, (n, 20)).astype(np.float32)


def test_to_torch_gives_equal_eval_outputs_and_copies():
    model = fastnn_model().eval()
    t = fastnn.to_torch(model)
    assert not t.training and isinstance(t[5], tnn.Dropout) and t[5].p == 0.3
    assert t[11].approximate == "tanh" and t[4].negative_slope == 0.2 and t[1].momentum == 0.2
    for n in (1, 37):
        x = batch(n)
        with torch.no_grad():
            np.testing.assert_allclose(t(torch.from_numpy(x)).numpy(), model.forward(x), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(t[0].weight.detach().numpy(), np.asarray(model[0].W).T)
    np.testing.assert_array_equal(t[1].running_var.numpy(), model[1].running_var)
    with torch.no_grad():
        t[0].weight.zero_()
    assert np.abs(model[0].W).sum() > 0  # no shared memory


def test_from_torch_gives_equal_eval_outputs():
    t = torch_model().eval()
    model = fastnn.from_torch(t)
    assert not model.training and type(model[5]) is nn.Dropout and model[1].eps == 1e-3
    for n in (1, 37):
        x = batch(n)
        with torch.no_grad():
            np.testing.assert_allclose(model.forward(x), t(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-4)
    back = fastnn.to_torch(model)
    for (name, a), b in zip(t.state_dict().items(), back.state_dict().values()):
        if name.endswith("num_batches_tracked"):
            continue
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_float64_round_trip():
    model = fastnn_model(dtype=np.float64).eval()
    t = fastnn.to_torch(model)
    assert t[0].weight.dtype == torch.float64
    x = batch().astype(np.float64)
    with torch.no_grad():
        np.testing.assert_allclose(t(torch.from_numpy(x)).numpy(), model.forward(x), rtol=1e-12, atol=1e-12)
    assert fastnn.from_torch(t)[0].W.dtype == np.float64


def fastnn_sgd_step(model, x, y, lr):
    model.train()
    loss = nn.SoftmaxCrossEntropy()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    optim.SGD(model.parameters(), lr=lr).step()


def torch_sgd_step(t, x, y, lr):
    t.train()
    opt = torch.optim.SGD(t.parameters(), lr=lr)
    opt.zero_grad()
    tnn.functional.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    opt.step()


def assert_same_step(fast, t, before):
    """Same parameters, and the same update (relative to the update's size)."""
    after = fastnn.to_torch(fast).state_dict()
    moved = 0
    for name, p in t.state_dict().items():
        if "running" in name or name.endswith("num_batches_tracked"):
            continue
        p = p.detach().numpy()
        np.testing.assert_allclose(after[name].numpy(), p, rtol=1e-4, atol=1e-6, err_msg=name)
        step_t, step_f = p - before[name], after[name].numpy() - before[name]
        moved += np.linalg.norm(step_t) > 0  # (a bias before BatchNorm gets a zero gradient)
        assert np.linalg.norm(step_f - step_t) <= 1e-4 * np.linalg.norm(step_t) + 1e-6, name
    assert moved >= 14


@pytest.mark.parametrize("direction", ["to_torch", "from_torch"])
def test_one_sgd_step_matches_pytorch(direction):
    x, y = batch(37), np.arange(37) % 5
    if direction == "to_torch":
        fast = fastnn_model(dropout=False)
        t = fastnn.to_torch(fast)
    else:
        t = torch_model(dropout=False)
        fast = fastnn.from_torch(t)
    before = {k: v.detach().numpy().copy() for k, v in t.state_dict().items()}
    fastnn_sgd_step(fast, x, y, lr=0.5)
    torch_sgd_step(t, x, y, lr=0.5)
    assert_same_step(fast, t, before)
    # running statistics: the same mean; fastnn's variance is the batch's biased one, PyTorch's unbiased
    m, n = 0.2, len(x)
    np.testing.assert_allclose(fast[1].running_mean, t[1].running_mean.numpy(), rtol=1e-4, atol=1e-5)
    batch_var_t = (t[1].running_var.numpy() - (1 - m) * before["1.running_var"]) / m
    batch_var_f = (fast[1].running_var - (1 - m) * before["1.running_var"]) / m
    np.testing.assert_allclose(batch_var_t * (n - 1) / n, batch_var_f, rtol=1e-3, atol=1e-5)


class Custom(nn.Module):
    def forward(self, x, training=None):
        return x


def test_refusals_name_the_layer():
    with pytest.raises(TypeError, match=r"layer 1 \(Conv1d"):
        fastnn.from_torch(tnn.Sequential(tnn.Linear(4, 4), tnn.Conv1d(1, 1, 3)))
    with pytest.raises(TypeError, match=r"layer 0 \(GELU.*approximate='tanh'"):
        fastnn.from_torch(tnn.Sequential(tnn.GELU()))
    with pytest.raises(TypeError, match="torch.nn.Sequential, got Linear"):
        fastnn.from_torch(tnn.Linear(4, 4))
    with pytest.raises(TypeError, match=r"layer 0 \(Sequential"):
        fastnn.from_torch(tnn.Sequential(tnn.Sequential(tnn.ReLU())))
    with pytest.raises(TypeError, match="float16"):
        fastnn.from_torch(tnn.Sequential(tnn.Linear(4, 4).half()))
    with pytest.raises(TypeError, match="layer 1 .*Custom"):
        fastnn.to_torch(nn.Sequential([nn.ReLU(), Custom()]))
    with pytest.raises(TypeError, match="fastnn Sequential, got Linear"):
        fastnn.to_torch(nn.Linear(4, 4))


def _fastnn_bad_params():
    """(model, error type, message): arrays fastnn's layer path refuses; copy_ would broadcast or cast them."""
    def lin():
        return nn.Sequential([nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)])
    cases = []
    m = lin()
    m[0].W = nn.Parameter(np.zeros((5, 1), np.float32))
    cases.append((m, ValueError, r"layer 0 \(Linear\(5, 4\)\): W must have shape \(5, 4\)"))
    m = lin()
    m[0].W = nn.Parameter(np.zeros((5, 7), np.float32))
    cases.append((m, ValueError, r"layer 0 .*W must have shape \(5, 4\)"))
    m = lin()
    m[0].b = nn.Parameter(np.zeros(1, np.float32))
    cases.append((m, ValueError, r"layer 0 .*b must have shape \(4,\)"))
    m = lin()
    m[0].b = nn.Parameter(np.zeros(4, np.float64))
    cases.append((m, TypeError, r"layer 0 .*b has dtype float64"))
    m = nn.Sequential([nn.Linear(5, 4), nn.BatchNorm(4)])
    m[1].running_var = np.ones(1, np.float32)
    cases.append((m, ValueError, r"layer 1 \(BatchNorm.*running_var must have shape \(4,\)"))
    m = nn.Sequential([nn.Linear(5, 4), nn.BatchNorm(4)])
    m[1].running_mean = np.zeros(4, np.float64)
    cases.append((m, TypeError, r"layer 1 \(BatchNorm.*running_mean .*dtype float64"))
    m = nn.Sequential([nn.Linear(5, 4), nn.LayerNorm(4)])
    m[1].gamma = nn.Parameter(np.ones(1, np.float32))
    cases.append((m, ValueError, r"layer 1 \(LayerNorm.*gamma must have shape \(4,\)"))
    m = nn.Sequential([nn.Linear(5, 4), nn.LayerNorm(4)])
    m[1].beta = nn.Parameter(np.zeros(4, np.float64))
    cases.append((m, TypeError, r"layer 1 \(LayerNorm.*beta .*dtype float64"))
    return cases


@pytest.mark.parametrize("case", range(len(_fastnn_bad_params())))
def test_to_torch_refuses_what_the_layer_path_refuses(case):
    model, exc, msg = _fastnn_bad_params()[case]
    with pytest.raises(exc, match="to_torch: " + msg):
        fastnn.to_torch(model)


def _torch_bad_tensors():
    """(module, error type, message): tensors that assigning into fastnn's arrays would broadcast or cast."""
    def lin(**replace):
        t = tnn.Linear(5, 4)
        for k, v in replace.items():
            setattr(t, k, tnn.Parameter(v))
        return tnn.Sequential(tnn.ReLU(), t)
    where = r"layer 1 \(Linear\(in_features=5, out_features=4, bias=True\)\): "
    cases = [
        (lin(weight=torch.randn(4, 1)), ValueError, where + r"weight has shape \(4, 1\), expected \(4, 5\)"),
        (lin(weight=torch.randn(1, 5)), ValueError, where + r"weight has shape \(1, 5\), expected \(4, 5\)"),
        (lin(weight=torch.randn(3, 3)), ValueError, where + r"weight has shape \(3, 3\), expected \(4, 5\)"),
        (lin(bias=torch.randn(1)), ValueError, where + r"bias has shape \(1,\), expected \(4,\)"),
        (lin(bias=torch.randn(4, dtype=torch.float64)), TypeError, where + "bias has dtype torch.float64"),
    ]
    for name, shape, dtype, exc, msg in [
            ("running_var", 1, torch.float32, ValueError, r"running_var has shape \(1,\), expected \(4,\)"),
            ("running_mean", 1, torch.float32, ValueError, r"running_mean has shape \(1,\), expected \(4,\)"),
            ("running_var", 4, torch.float64, TypeError, "running_var has dtype torch.float64")]:
        bn = tnn.BatchNorm1d(4)
        setattr(bn, name, torch.ones(shape, dtype=dtype))
        cases.append((tnn.Sequential(bn), exc, r"layer 0 \(BatchNorm1d.*\): " + msg))
    ln = tnn.LayerNorm(4)
    ln.weight = tnn.Parameter(torch.ones(1))
    cases.append((tnn.Sequential(ln), ValueError, r"layer 0 \(LayerNorm.*\): weight has shape \(1,\), expected \(4,\)"))
    return cases


@pytest.mark.parametrize("case", range(len(_torch_bad_tensors())))
def test_from_torch_refuses_tensors_of_the_wrong_shape_or_dtype(case):
    module, exc, msg = _torch_bad_tensors()[case]
    with pytest.raises(exc, match="from_torch: " + msg):
        fastnn.from_torch(module)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_torch_layernorm_without_affine_keeps_the_models_dtype(dtype):
    torch.manual_seed(0)
    t = tnn.Sequential(tnn.Linear(5, 4), tnn.LayerNorm(4, elementwise_affine=False), tnn.Linear(4, 3)).to(dtype)
    model = fastnn.from_torch(t).eval()
    npdt = np.float32 if dtype == torch.float32 else np.float64
    assert model[1].gamma.dtype == npdt and model[1].beta.dtype == npdt
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(npdt)
    with torch.no_grad():
        np.testing.assert_allclose(model.forward(x), t(torch.from_numpy(x)).numpy(), rtol=0,
                                   atol=1e-5 if npdt == np.float32 else 1e-12)
    # alone it takes torch's default dtype; in a mixed module it cannot choose and says so
    assert fastnn.from_torch(tnn.Sequential(tnn.LayerNorm(4, elementwise_affine=False)))[0].gamma.dtype == np.float32
    mixed = tnn.Sequential(tnn.Linear(5, 4).double(), tnn.LayerNorm(4, elementwise_affine=False), tnn.Linear(4, 3))
    with pytest.raises(TypeError, match=r"layer 1 \(LayerNorm.*mixes dtypes"):
        fastnn.from_torch(mixed)
