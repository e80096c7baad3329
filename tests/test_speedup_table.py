"""benchmarks/speedup_table.py on a synthetic pytest-benchmark JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "speedup_table.py"
_spec = importlib.util.spec_from_file_location("speedup_table", _PATH)
st = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = st  # dataclasses look their module up there
_spec.loader.exec_module(st)


def _bench(op, impl, shape, dtype, median, size="medium", **extra):
    shape_id = "x".join(map(str, shape))
    return {
        "group": f"{op}-{shape_id}-{dtype}",
        "name": f"test_{op}[{shape_id}-{dtype}-{impl}]",
        "fullname": f"benchmarks/bench_x.py::test_{op}[{shape_id}-{dtype}-{impl}]",
        "params": {"impl": impl},
        "extra_info": {"op": op, "impl": impl, "shape": list(shape), "dtype": dtype,
                       "size": size, **extra},
        "stats": {"median": median, "mean": median, "rounds": 5},
    }


@pytest.fixture
def bench_json(tmp_path):
    m = (1024, 1024)
    benches = [
        _bench("relu_forward", "numpy", m, "float32", 4e-3, bytes=8 << 20),
        _bench("relu_forward", "numba", m, "float32", 1e-3, bytes=8 << 20),
        _bench("relu_backward", "numpy", m, "float32", 6e-3),
        _bench("relu_backward", "numba", m, "float32", 1e-3),
        _bench("relu_forward", "numpy", (64, 256), "float32", 20e-6, size="small"),
        _bench("relu_forward", "numba", (64, 256), "float32", 5e-6, size="small"),
        _bench("linear_forward", "numpy", (1024, 1024, 1024), "float32", 0.02, flops=2 << 30),
        _bench("linear_forward", "numba", (1024, 1024, 1024), "float32", 0.01, flops=2 << 30),
        _bench("linear_backward", "numpy", (1024, 1024, 1024), "float32", 0.04),
        _bench("linear_backward", "numba", (1024, 1024, 1024), "float32", 0.05),
        _bench("adam_update", "numpy", m, "float64", 3e-3),  # no pair, no numba side
        {"group": None, "name": "test_other", "params": None, "stats": {"median": 1.0}},
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    return path


def test_load_pairs_medians_by_op_shape_dtype(bench_json):
    rows, skipped = st.load([bench_json])
    assert skipped == ["test_other"]
    by_key = {(r.op, r.shape, r.dtype): r for r in rows}
    relu = by_key[("relu_forward", (1024, 1024), "float32")]
    assert relu.median == {"numpy": 4e-3, "numba": 1e-3}
    assert relu.speedup == pytest.approx(4.0)
    assert by_key[("adam_update", (1024, 1024), "float64")].speedup is None
    # forward before backward, small before medium within an op
    ops = [(r.op, r.shape) for r in rows if r.op.startswith("relu")]
    assert ops == [("relu_forward", (64, 256)), ("relu_forward", (1024, 1024)),
                   ("relu_backward", (1024, 1024))]


def test_identifies_from_group_and_params_without_extra_info(tmp_path):
    bench = _bench("tanh_forward", "numba", (8, 4), "float64", 1e-6)
    del bench["extra_info"]
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": [bench]}))
    rows, skipped = st.load([path])
    assert skipped == []
    assert [(r.op, r.shape, r.dtype, r.median) for r in rows] == [
        ("tanh_forward", (8, 4), "float64", {"numba": 1e-6})]


def test_later_file_wins(bench_json, tmp_path):
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"benchmarks": [
        _bench("relu_forward", "numba", (1024, 1024), "float32", 2e-3)]}))
    rows, _ = st.load([bench_json, newer])
    relu = next(r for r in rows if r.op == "relu_forward" and r.shape == (1024, 1024))
    assert relu.median["numba"] == 2e-3
    assert relu.speedup == pytest.approx(2.0)


def test_forward_backward_pairs_at_medium_float32(bench_json):
    rows, _ = st.load([bench_json])
    ps = {p.name: p for p in st.pairs(rows)}
    assert set(ps) == {"relu", "linear"}
    assert ps["relu"].speedup == pytest.approx((4e-3 + 6e-3) / (1e-3 + 1e-3))
    assert ps["linear"].speedup == pytest.approx(0.06 / 0.06)
    assert st.pairs(rows, size="small") == []  # relu_backward has no small run
    assert st.pairs(rows, dtype="float64") == []


def test_main_prints_and_writes_markdown(bench_json, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert st.main([str(bench_json), "--markdown-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == out.read_text().strip()
    lines = printed.splitlines()
    assert "| op | shape | dtype | numpy median | numba median | speedup | numba throughput |" in lines
    assert "| relu_forward | (1024, 1024) | float32 | 4 ms | 1 ms | 4.00x | 8.4 GB/s |" in lines
    assert "| linear_forward | (1024, 1024, 1024) | float32 | 20 ms | 10 ms | 2.00x | 214.7 GFLOP/s |" in lines
    assert "| adam_update | (1024, 1024) | float64 | 3 ms | — | — | — |" in lines
    assert "| relu | (1024, 1024) | float32 | 10 ms | 2 ms | 5.00x |" in lines
    assert "| linear | (1024, 1024, 1024) | float32 | 60 ms | 60 ms | 1.00x |" in lines


@pytest.mark.parametrize("content, code, message", [
    ('{"benchmarks": []}', 1, "no numba/numpy benchmarks"),
    ("not json", 2, "is not JSON"),
    ("[1, 2]", 2, "not a pytest-benchmark JSON"),
])
def test_main_reports_unusable_input(tmp_path, capsys, content, code, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert st.main([str(path)]) == code
    assert message in capsys.readouterr().err


def test_main_reports_missing_file(tmp_path, capsys):
    assert st.main([str(tmp_path / "missing.json")]) == 2
    assert "No such file" in capsys.readouterr().err
