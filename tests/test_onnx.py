"""fastnn.onnx.export, checked by running the file in onnxruntime."""

import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def every_layer_model(dtype=np.float32, seed=0):
    fastnn.manual_seed(seed)
    model = nn.Sequential([
        nn.Linear(20, 32, dtype=dtype), nn.BatchNorm(32, eps=1e-3, dtype=dtype), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(32, 24, dtype=dtype), nn.LeakyReLU(0.2),
        nn.Linear(24, 24, dtype=dtype), nn.Sigmoid(),
        nn.Linear(24, 16, dtype=dtype), nn.Tanh(),
        nn.Linear(16, 16, dtype=dtype), nn.GELU(), nn.LayerNorm(16, eps=1e-4, dtype=dtype),
        nn.Linear(16, 12, bias=False, dtype=dtype), nn.SiLU(),
        nn.Linear(12, 5, dtype=dtype),
    ])
    rng = np.random.default_rng(seed)
    for _ in range(3):  # non-trivial running statistics
        model.forward(rng.normal(1.0, 2.0, (64, 20)).astype(dtype))
    for p in model.parameters():  # gamma/beta away from 1/0
        p += rng.normal(0, 0.1, p.shape).astype(dtype)
    return model.eval()


def run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_layer_type_matches_in_onnxruntime(tmp_path, dtype):
    model = every_layer_model(dtype)
    path = tmp_path / "model.onnx"
    before = model.state_dict()
    fastnn.onnx.export(model, path)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    rng = np.random.default_rng(1)
    for n in (1, 37):
        x = rng.normal(1.0, 2.0, (n, 20)).astype(dtype)
        got = run_onnx(path, x)
        assert got.dtype == dtype and got.shape == (n, 5)
        np.testing.assert_allclose(got, model.forward(x), rtol=0, atol=1e-4)
    # the BatchNorm used running statistics, not the batch's: one row gives the same as within 37
    x = rng.normal(size=(37, 20)).astype(dtype)
    np.testing.assert_allclose(run_onnx(path, x[:1]), run_onnx(path, x)[:1], rtol=0, atol=1e-5)


def test_graph_has_a_dynamic_batch_and_no_dropout(tmp_path):
    proto = fastnn.onnx.export(every_layer_model(), tmp_path / "m.onnx")
    dim = proto.graph.input[0].type.tensor_type.shape.dim
    assert dim[0].dim_param == "batch" and dim[1].dim_value == 20
    ops = [n.op_type for n in proto.graph.node]
    assert "Dropout" not in ops and ops.count("Gemm") == 7
    assert {"BatchNormalization", "LayerNormalization", "LeakyRelu", "Sigmoid", "Tanh", "Relu"} <= set(ops)
    loaded = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(loaded, full_check=True)


def test_the_seeds_network_trained_in_training_mode_exports(tmp_path):
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)])
    X = np.random.default_rng(0).random((32, 784), dtype=np.float32)
    model.train_on_batch(X, np.arange(32) % 10, epochs=3)
    fastnn.onnx.export(model, tmp_path / "seed.onnx")  # a training-mode model exports its eval form
    np.testing.assert_allclose(run_onnx(tmp_path / "seed.onnx", X), model.forward(X, training=False),
                               rtol=0, atol=1e-4)


class Custom(nn.Module):
    def forward(self, x, training=None):
        return x


def test_unsupported_modules_are_refused_by_name(tmp_path):
    model = nn.Sequential([nn.Linear(4, 4), Custom()])
    with pytest.raises(TypeError, match="layer 1 .*Custom"):
        fastnn.onnx.export(model, tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="Sequential, got Linear"):
        fastnn.onnx.export(nn.Linear(4, 4), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="input_features"):
        fastnn.onnx.export(nn.Sequential([nn.ReLU()]), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    fastnn.onnx.export(nn.Sequential([nn.ReLU()]), tmp_path / "x.onnx", input_features=3)
    np.testing.assert_array_equal(run_onnx(tmp_path / "x.onnx", np.array([[-1, 0, 2]], np.float32)), [[0, 0, 2]])


def test_import_fastnn_does_not_import_onnx():
    code = "import sys, fastnn; fastnn.onnx; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _linear_model():
    return nn.Sequential([nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)])


def _bad_params():
    """(model, error type, message): parameters the layer path refuses."""
    cases = []
    m = _linear_model()
    m[0].b = nn.Parameter(np.zeros(1, np.float32))  # Gemm would broadcast it
    cases.append((m, ValueError, r"layer 0 \(Linear\(4, 4\)\): b must have shape \(4,\)"))
    m = _linear_model()
    m[0].b = nn.Parameter(np.zeros((1, 4), np.float32))
    cases.append((m, ValueError, r"layer 0 .*b must be 1-D"))
    m = _linear_model()
    m[0].W = nn.Parameter(np.zeros((4, 7), np.float32))
    cases.append((m, ValueError, r"layer 0 .*W must have shape \(4, 4\)"))
    m = _linear_model()
    m[2].b = nn.Parameter(np.zeros(3, np.float64))
    cases.append((m, TypeError, r"layer 2 .*b has dtype float64"))
    m = nn.Sequential([nn.Linear(4, 4), nn.LayerNorm(4)])
    m[1].gamma = nn.Parameter(np.ones(1, np.float32))  # LayerNormalization would broadcast it
    cases.append((m, ValueError, r"layer 1 \(LayerNorm.*gamma must have shape \(4,\)"))
    m = nn.Sequential([nn.Linear(4, 4), nn.BatchNorm(4)])
    m[1].running_mean = np.zeros(2, np.float32)
    cases.append((m, ValueError, r"layer 1 \(BatchNorm.*running_mean must have shape \(4,\)"))
    m = nn.Sequential([nn.Linear(4, 4), nn.BatchNorm(4)])
    m[1].running_var = np.ones(1, np.float32)
    cases.append((m, ValueError, r"layer 1 \(BatchNorm.*running_var must have shape \(4,\)"))
    m = nn.Sequential([nn.Linear(4, 4), nn.BatchNorm(4)])
    m[1].running_var = np.ones(4, np.float64)
    cases.append((m, TypeError, r"layer 1 \(BatchNorm.*running_var .*dtype float64"))
    m = nn.Sequential([nn.Linear(4, 4), nn.BatchNorm(4)])
    m[1].running_mean = [0.0] * 4
    cases.append((m, TypeError, r"layer 1 \(BatchNorm.*running_mean .*numpy array, got list"))
    return cases


@pytest.mark.parametrize("case", range(len(_bad_params())))
def test_parameters_the_layer_path_refuses_are_refused(tmp_path, case):
    model, exc, msg = _bad_params()[case]
    with pytest.raises(exc, match="fastnn.onnx.export: " + msg):
        fastnn.onnx.export(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_widths_that_do_not_chain_name_the_layers(tmp_path):
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\(7, 3\)\) takes 7 features but layer 0 "
                                         r"\(Linear\(4, 4\)\) gives 4"):
        fastnn.onnx.export(nn.Sequential([nn.Linear(4, 4), nn.ReLU(), nn.Linear(7, 3)]), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm\(5.*takes 5 features but layer 0"):
        fastnn.onnx.export(nn.Sequential([nn.Linear(4, 4), nn.BatchNorm(5)]), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\(4, 4\)\) takes 4 features but input_features gives 9"):
        fastnn.onnx.export(_linear_model(), tmp_path / "x.onnx", input_features=9)
    assert not (tmp_path / "x.onnx").exists()
    # agreeing input_features is fine; LayerNorm last gives the output width
    proto = fastnn.onnx.export(nn.Sequential([nn.Linear(4, 6), nn.LayerNorm(6)]), tmp_path / "x.onnx",
                               input_features=4)
    assert proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 6


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"opset": "17"}, TypeError, "opset must be an int, got str"),
    ({"opset": None}, TypeError, "opset must be an int, got NoneType"),
    ({"opset": 17.5}, TypeError, "opset must be an int, got float"),
    ({"opset": True}, TypeError, "opset must be an int, got bool"),
    ({"opset": 16}, ValueError, "opset must be at least 17"),
    ({"opset": 999}, ValueError, "opset must be at most"),
    ({"input_features": 0}, ValueError, "input_features must be positive, got 0"),
    ({"input_features": -3}, ValueError, "input_features must be positive"),
    ({"input_features": "a"}, TypeError, "input_features must be an int, got str"),
    ({"input_features": 2.5}, TypeError, "input_features must be an int, got float"),
])
def test_opset_and_input_features_are_checked(tmp_path, kwargs, exc, msg):
    model = nn.Sequential([nn.ReLU()])
    kwargs = {"input_features": 3, **kwargs}
    with pytest.raises(exc, match=msg):
        fastnn.onnx.export(model, tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_newest_opset_and_numpy_ints_still_export(tmp_path):
    model = nn.Sequential([nn.Linear(4, 3), nn.LayerNorm(3)]).eval()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    for opset in (np.int64(17), 21):
        fastnn.onnx.export(model, tmp_path / "x.onnx", opset=opset)
        np.testing.assert_allclose(run_onnx(tmp_path / "x.onnx", x), model.forward(x), rtol=0, atol=1e-5)
    proto = fastnn.onnx.export(nn.Sequential([nn.ReLU()]), tmp_path / "x.onnx", input_features=np.int64(3),
                               opset=onnx.defs.onnx_opset_version())
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
