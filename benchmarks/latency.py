"""Inference latency of the seed's network (784-256-128-10, eval mode) at small batches:
fastnn's ``model.forward`` against onnxruntime on the exported file and PyTorch eager.

    python benchmarks/latency.py                   # batches 1, 8, 64; 15 rounds
    python benchmarks/latency.py --rounds 5 --threads 1

A setup process builds the network with fastnn, exports it with
``fastnn.onnx.export`` and writes its weights to an ``.npz``. Then one worker
process per framework loads the model (the onnxruntime and PyTorch workers never
import fastnn), and the parent runs interleaved rounds: in each round every
worker, in a rotating order, times ``--calls`` single calls per batch size and
reports their median. The table gives, per framework and batch size, the median
over rounds of those per-round medians and the spread (min-max over rounds), and
the ratios of fastnn to each peer taken round by round. Before timing, the
workers' outputs on one batch are checked against each other (within 1e-4).

``--threads N`` sets every framework's intra-op threads to N (default: each
library's own default). Timings on a shared machine are noisy: compare ratios
from the same run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

FRAMEWORKS = ("fastnn", "onnxruntime", "torch")
SIZES = (784, 256, 128, 10)


def _input(batch):
    return np.random.default_rng(batch).random((batch, SIZES[0]), dtype=np.float32)


# -- the setup process -------------------------------------------------------
def setup(directory):
    import fastnn
    from fastnn import nn

    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)])
    model.eval()
    fastnn.save(os.path.join(directory, "model.npz"), model)
    fastnn.onnx.export(model, os.path.join(directory, "model.onnx"))
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    np.savez(os.path.join(directory, "weights.npz"),
             **{f"W{i}": np.asarray(m.W) for i, m in enumerate(linears)},
             **{f"b{i}": np.asarray(m.b) for i, m in enumerate(linears)})


# -- the workers: each builds a callable x -> output (numpy float32) ----------
def _fastnn_model(directory, threads):
    import fastnn
    from fastnn import nn

    if threads:
        fastnn.set_num_threads(threads)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)])
    fastnn.load(os.path.join(directory, "model.npz"), model)
    model.eval()
    return model.forward


def _onnxruntime_model(directory, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(directory, "model.onnx"), opts,
                                providers=["CPUExecutionProvider"])

    def run(x):
        return sess.run(["output"], {"input": x})[0]
    return run


def _torch_model(directory, threads):
    import torch

    if threads:
        torch.set_num_threads(threads)
    w = np.load(os.path.join(directory, "weights.npz"))
    layers = []
    for i in range(3):
        lin = torch.nn.Linear(SIZES[i], SIZES[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w[f"W{i}"].T.copy()))
            lin.bias.copy_(torch.from_numpy(w[f"b{i}"]))
        layers.append(lin)
        if i < 2:
            layers += [torch.nn.ReLU(), torch.nn.Dropout(0.2)]
    model = torch.nn.Sequential(*layers).eval()
    torch.set_grad_enabled(False)  # the worker only ever runs inference: no per-call context

    def run(x):
        return model(x)
    run.convert = torch.from_numpy
    run.back = lambda y: y.numpy()
    return run


def worker(framework, directory, threads):
    """Answer commands on stdin, one JSON line each: ``check`` returns the
    output on a fixed batch; ``time`` returns per-batch medians (µs) of calls."""
    forward = {"fastnn": _fastnn_model, "onnxruntime": _onnxruntime_model,
               "torch": _torch_model}[framework](directory, threads)
    convert = getattr(forward, "convert", lambda x: x)
    back = getattr(forward, "back", lambda y: y)
    inputs = {}
    print(json.dumps({"ready": framework}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "check":
            out = back(forward(convert(_input(cmd["batch"]))))
            print(json.dumps({"output": np.asarray(out, np.float64).tolist()}), flush=True)
        elif cmd["op"] == "time":
            result = {}
            for b in cmd["batches"]:
                x = inputs.setdefault(b, convert(_input(b)))
                for _ in range(cmd["warmup"]):
                    forward(x)
                times = []
                for _ in range(cmd["calls"]):
                    t = time.perf_counter_ns()
                    forward(x)
                    times.append(time.perf_counter_ns() - t)
                result[str(b)] = statistics.median(times) / 1e3
            print(json.dumps(result), flush=True)
        else:
            return


# -- the parent ----------------------------------------------------------------
def _ask(proc, cmd):
    proc.stdin.write(json.dumps(cmd) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a worker exited: {proc.args}")
    return json.loads(line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=200, help="timed calls per batch size per round")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for every framework (0: defaults)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.setup:
        setup(args.dir)
        return 0
    if args.worker:
        worker(args.worker, args.dir, args.threads)
        return 0

    batches = [int(b) for b in args.batches.split(",")]
    frameworks = args.frameworks.split(",")
    me = os.path.abspath(__file__)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(me))  # this checkout's fastnn, in every process
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, me, "--setup", "--dir", d], check=True, env=env)
        procs = {}
        try:
            for f in frameworks:
                procs[f] = subprocess.Popen([sys.executable, me, "--worker", f, "--dir", d,
                                             "--threads", str(args.threads)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            for proc in procs.values():
                json.loads(proc.stdout.readline())
            ref = None
            for f, proc in procs.items():
                out = np.array(_ask(proc, {"op": "check", "batch": 8})["output"])
                if ref is None:
                    ref = out
                elif np.abs(out - ref).max() > 1e-4:
                    raise RuntimeError(f"{f}'s output differs from {frameworks[0]}'s by {np.abs(out - ref).max():.2e}")
            rounds = {f: [] for f in frameworks}
            for r in range(args.rounds):
                order = frameworks[r % len(frameworks):] + frameworks[:r % len(frameworks)]
                for f in order:
                    rounds[f].append(_ask(procs[f], {"op": "time", "batches": batches,
                                                     "calls": args.calls, "warmup": args.warmup}))
        finally:
            for proc in procs.values():
                try:
                    proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    proc.stdin.close()
                except OSError:
                    pass
                proc.wait(timeout=60)

    results = {"threads": args.threads or "default", "rounds": args.rounds, "calls": args.calls, "batches": {}}
    head = f"{'batch':>5} " + " ".join(f"{f + ' us (min-max)':>28}" for f in frameworks)
    peers = [f for f in frameworks if f != "fastnn"] if "fastnn" in frameworks else []
    head += "".join(f" {'fastnn/' + f:>18}" for f in peers)
    print(f"eval forward of 784-256-128-10, float32; threads: {results['threads']}; "
          f"{args.rounds} interleaved rounds x {args.calls} calls")
    print(head)
    for b in batches:
        row, entry = f"{b:>5} ", {}
        for f in frameworks:
            v = [rd[str(b)] for rd in rounds[f]]
            entry[f] = {"median_us": statistics.median(v), "min_us": min(v), "max_us": max(v)}
            row += f"{statistics.median(v):>10.1f} ({min(v):>7.1f}-{max(v):>7.1f})"
        for f in peers:
            ratios = [a[str(b)] / c[str(b)] for a, c in zip(rounds["fastnn"], rounds[f])]
            entry["fastnn/" + f] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            row += f" {statistics.median(ratios):>6.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        results["batches"][b] = entry
        print(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
