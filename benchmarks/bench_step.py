"""One training step of the seed's network: the compiled step against the layer path.

A step is what ``fit`` runs per batch: ``np.take`` of the batch, the forward
and the loss, the backward, Adam's update. "compiled" is fastnn's default
(``fastnn/_step.py``: one compiled call for the forward and loss, one for
the backward); "layers" is the same model layer by layer (the program
switched off). Before timing, one step of each from the same start must
agree (to rounding: the same kernels, compiled into the step).

    pytest benchmarks/bench_step.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""

import numpy as np
import pytest

import fastnn
from fastnn import _step, nn, optim

BATCHES = (64, 256)


def _setup(batch, compiled):
    fastnn.manual_seed(0)
    model = nn.Sequential([nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                           nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)])
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(1)
    X = rng.random((8 * batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, 8 * batch)
    if compiled:
        prog = _step.SequentialProgram.build(model, nn.SoftmaxCrossEntropy(), X)
        assert prog is not None, _step.SequentialProgram.why_not
        xb, yb = prog.batch(batch)

        def step(idx):
            np.take(X, idx, axis=0, out=xb, mode="clip")
            np.take(y, idx, out=yb, mode="clip")
            prog.forward(batch, keep_state=False)
            loss = prog.loss()
            prog.backward()
            opt.step()
            return loss
    else:
        loss_fn = nn.SoftmaxCrossEntropy()
        xb, yb = np.empty((batch, 784), np.float32), np.empty(batch, np.int64)

        def step(idx):
            np.take(X, idx, axis=0, out=xb, mode="clip")
            np.take(y, idx, out=yb, mode="clip")
            loss = loss_fn.forward(model.forward(xb, training=True), yb)
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
            return loss
    return model, step, rng


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("path", ["compiled", "layers"])
def test_train_step(benchmark, path, batch, monkeypatch):
    results = []
    for compiled in (True, False):
        with monkeypatch.context() as mp:
            if not compiled:
                mp.setattr(_step, "module_forward", lambda model, x: None)
            model, step, rng = _setup(batch, compiled)
            loss = step(rng.permutation(8 * batch)[:batch])
            results.append((loss, [p.copy() for p in model.parameters()]))
    (l1, p1), (l2, p2) = results
    assert abs(l1 - l2) <= 1e-5 * abs(l2)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    if path == "layers":
        monkeypatch.setattr(_step, "module_forward", lambda model, x: None)
    model, step, rng = _setup(batch, path == "compiled")
    perm = rng.permutation(8 * batch)
    step(perm[:batch])
    counter = iter(range(10**9))

    def one():
        k = next(counter) % 8
        step(perm[k * batch:(k + 1) * batch])

    benchmark.group = f"train step, batch {batch}"
    benchmark.extra_info["batch"] = batch
    benchmark(one)
