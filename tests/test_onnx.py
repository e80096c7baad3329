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
