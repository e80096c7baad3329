"""Train the seed's MNIST architecture with Adam on Fashion-MNIST (or MNIST).

    python examples/train_fashion_mnist.py --epochs 5

Sequential([Linear(784, 256), ReLU(), Dropout(0.2), Linear(256, 128), ReLU(),
Dropout(0.2), Linear(128, 10)]), SoftmaxCrossEntropy, Adam(lr=1e-3), batch 64.
The last 5,000 training images are held out for validation (early stopping
restores the best epoch); the test set is evaluated once at the end.
"""

from __future__ import annotations

import argparse
import time

import fastnn
from fastnn import nn, optim
from fastnn.data import load_mnist


def build_model() -> nn.Sequential:
    return nn.Sequential([
        nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 10),
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="fashion", choices=["fashion", "mnist"])
    ap.add_argument("--data-dir", default=None, help="directory with the IDX files (default: search)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=int, default=5000, help="training images held out for validation")
    ap.add_argument("--patience", type=int, default=3, help="early-stopping patience (0: off)")
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all cores)")
    ap.add_argument("--backend", default="numba", choices=["numba", "numpy"])
    ap.add_argument("--save", default=None, help="write a checkpoint (.npz) at the end")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    if args.threads:
        fastnn.set_num_threads(args.threads)
    fastnn.set_backend(args.backend)
    fastnn.manual_seed(args.seed)

    (X, y), (X_test, y_test) = load_mnist(args.data_dir, kind=args.kind)
    if args.val:
        X, X_val, y, y_val = X[:-args.val], X[-args.val:], y[:-args.val], y[-args.val:]
        validation = (X_val, y_val)
    else:
        validation = None
    print(f"{args.kind}: {len(X)} train, {len(X_val) if validation else 0} validation, "
          f"{len(X_test)} test; backend {args.backend}, {fastnn.get_num_threads()} threads")

    model = build_model()
    loss_fn = nn.SoftmaxCrossEntropy()
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    history = fastnn.fit(
        model, loss_fn, optimizer, X, y, epochs=args.epochs, batch_size=args.batch_size,
        validation_data=validation,
        early_stopping=args.patience if validation and args.patience else None,
        seed=args.seed, progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - t0
    test_loss, test_acc = fastnn.evaluate(model, loss_fn, X_test, y_test)
    print(f"trained {len(history.epoch)} epochs in {elapsed:.1f} s "
          f"({elapsed / max(len(history.epoch), 1):.1f} s/epoch)")
    print(f"test loss {test_loss:.4f}, test accuracy {test_acc:.4f}")
    if args.save:
        fastnn.save(args.save, model, optimizer, epoch=len(history.epoch), seed=history.seed,
                    test_accuracy=test_acc)
        print(f"saved {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
