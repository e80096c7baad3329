"""Numba-vs-NumPy speedup table from pytest-benchmark JSON files.

    pytest benchmarks --benchmark-only --benchmark-json=results/bench.json
    python benchmarks/speedup_table.py results/bench.json [--markdown-out FILE]

Prints two Markdown tables: one row per (op, shape, dtype) with the median
time of each implementation, the speedup (NumPy median / numba median) and
the numba side's throughput (GFLOP/s where the benchmark records ``flops``,
else GB/s of the bytes it reads and writes at least); then, for each op
with a ``<name>_forward`` and a ``<name>_backward``, the combined speedup of
the pair (sum of NumPy medians / sum of numba medians) at ``--pair-size``
(default "medium": (1024, 1024), Linear's (1024, 1024, 1024), softmax's
(1024, 1000)) and ``--pair-dtype`` (default float32).

Each benchmark is identified by its ``extra_info`` (op, impl, shape, dtype,
size), as ``benchmarks/conftest.py`` records it; where that is missing, by
its group ``<op>-<shape>-<dtype>`` and its ``impl`` parameter. When several
files hold the same benchmark, the last one given wins.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field

IMPLS = ("numpy", "numba")
DIRECTIONS = ("_forward", "_backward")


@dataclass
class Row:
    op: str
    shape: tuple
    dtype: str
    size: str | None = None
    median: dict = field(default_factory=dict)  # impl -> seconds
    bytes: int | None = None
    flops: int | None = None

    @property
    def speedup(self) -> float | None:
        if all(i in self.median for i in IMPLS) and self.median["numba"] > 0:
            return self.median["numpy"] / self.median["numba"]
        return None


def _parse_shape(text) -> tuple:
    if isinstance(text, (list, tuple)):
        return tuple(int(v) for v in text)
    return tuple(int(v) for v in str(text).split("x"))


def _identify(bench: dict):
    """(op, impl, shape, dtype, size) of one benchmark entry, or None."""
    info = bench.get("extra_info") or {}
    op, impl, shape, dtype = info.get("op"), info.get("impl"), info.get("shape"), info.get("dtype")
    if not (op and shape and dtype):
        parts = str(bench.get("group") or "").rsplit("-", 2)
        if len(parts) != 3:
            return None
        op, shape, dtype = parts
    impl = impl or (bench.get("params") or {}).get("impl")
    if impl not in IMPLS:
        return None
    try:
        shape = _parse_shape(shape)
    except ValueError:
        return None
    return op, impl, shape, dtype, info.get("size")


def load(paths) -> tuple[list[Row], list[str]]:
    """Rows from the JSON files, and the names of the entries skipped."""
    rows: dict[tuple, Row] = {}
    skipped = []
    for path in paths:
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a pytest-benchmark JSON file")
        for bench in data.get("benchmarks", []):
            ident = _identify(bench)
            median = (bench.get("stats") or {}).get("median")
            if ident is None or median is None:
                skipped.append(bench.get("fullname") or bench.get("name") or "?")
                continue
            op, impl, shape, dtype, size = ident
            row = rows.setdefault((op, shape, dtype), Row(op, shape, dtype))
            row.median[impl] = float(median)
            info = bench.get("extra_info") or {}
            row.size = size or row.size
            row.bytes = info.get("bytes", row.bytes)
            row.flops = info.get("flops", row.flops)
    return sorted(rows.values(), key=_sort_key), skipped


def _split(op: str):
    """("relu", 0) for relu_forward, ("relu", 1) for relu_backward,
    ("softmax_xent_labels", 0) for softmax_xent_forward_labels; (op, None) otherwise."""
    for rank, direction in enumerate(DIRECTIONS):
        if direction in op:
            return op.replace(direction, "", 1), rank
    return op, None


def _sort_key(row: Row):
    base, rank = _split(row.op)
    return base, rank or 0, row.dtype != "float32", math.prod(row.shape), row.dtype


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_speedup(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def throughput(row: Row) -> str:
    t = row.median.get("numba")
    if not t:
        return "—"
    if row.flops:
        return f"{row.flops / t / 1e9:.1f} GFLOP/s"
    if row.bytes:
        return f"{row.bytes / t / 1e9:.1f} GB/s"
    return "—"


def _table(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def speedup_table(rows: list[Row]) -> str:
    header = ("op", "shape", "dtype", "numpy median", "numba median", "speedup", "numba throughput")
    return _table(header, [
        (r.op, fmt_shape(r.shape), r.dtype, fmt_time(r.median.get("numpy")),
         fmt_time(r.median.get("numba")), fmt_speedup(r.speedup), throughput(r))
        for r in rows
    ])


@dataclass
class Pair:
    name: str
    shape: tuple
    dtype: str
    numpy: float
    numba: float

    @property
    def speedup(self) -> float:
        return self.numpy / self.numba


def pairs(rows: list[Row], size: str = "medium", dtype: str = "float32") -> list[Pair]:
    """Forward + backward sums for each op that has both, at ``size``
    (``"all"``: every size) and ``dtype``."""
    halves: dict[tuple, dict[int, Row]] = {}
    for r in rows:
        base, rank = _split(r.op)
        if rank is None or r.dtype != dtype or (size != "all" and r.size != size):
            continue
        halves.setdefault((base, r.shape, r.dtype), {})[rank] = r
    out = []
    for (base, shape, dt), h in halves.items():
        if len(h) == 2 and all(i in r.median for r in h.values() for i in IMPLS):
            out.append(Pair(base, shape, dt,
                            sum(r.median["numpy"] for r in h.values()),
                            sum(r.median["numba"] for r in h.values())))
    return sorted(out, key=lambda p: (p.name, math.prod(p.shape)))


def pair_table(ps: list[Pair]) -> str:
    header = ("op (forward + backward)", "shape", "dtype", "numpy", "numba", "speedup")
    return _table(header, [
        (p.name, fmt_shape(p.shape), p.dtype, fmt_time(p.numpy), fmt_time(p.numba),
         fmt_speedup(p.speedup))
        for p in ps
    ])


def render(rows: list[Row], pair_size: str = "medium", pair_dtype: str = "float32") -> str:
    parts = ["## Numba vs NumPy, per kernel", "",
             "Median times; speedup = NumPy median / numba median.", "",
             speedup_table(rows), ""]
    ps = pairs(rows, pair_size, pair_dtype)
    if ps:
        where = "all sizes" if pair_size == "all" else f"size {pair_size!r}"
        parts += [f"## Forward + backward ({where}, {pair_dtype})", "",
                  "Sum of the forward and backward medians of each implementation.", "",
                  pair_table(ps), ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json file(s)")
    ap.add_argument("--markdown-out", metavar="FILE", help="also write the tables to FILE")
    ap.add_argument("--pair-size", default="medium",
                    help="size of the forward+backward table: small, medium, large or all "
                         "(default: medium)")
    ap.add_argument("--pair-dtype", default="float32",
                    help="dtype of the forward+backward table (default: float32)")
    args = ap.parse_args(argv)

    try:
        rows, skipped = load(args.json)
    except (OSError, ValueError) as e:
        print(f"speedup_table: {e}", file=sys.stderr)
        return 2
    if skipped:
        print(f"speedup_table: skipped {len(skipped)} entries without op/impl/median "
              f"(first: {skipped[0]})", file=sys.stderr)
    if not rows:
        print("speedup_table: no numba/numpy benchmarks in the input (was it run with "
              "--benchmark-disable?)", file=sys.stderr)
        return 1
    text = render(rows, args.pair_size, args.pair_dtype)
    print(text)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
