"""Weight initialisers (the seed's He and Xavier) and fastnn's global seed.

``W`` has shape ``(fan_in, fan_out)``, as in the seed's ``Linear``.
"""

from __future__ import annotations

import numpy as np

from . import _validate as V

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed fastnn's generator: weight init and Dropout seeds drawn after
    this call are reproducible."""
    global _rng
    _rng = V.seeded_rng("seed", seed)


def default_rng() -> np.random.Generator:
    return _rng


def _fans(fan_in, fan_out):
    return V.positive_int("fan_in", fan_in), V.positive_int("fan_out", fan_out)


def he(fan_in: int, fan_out: int, dtype=np.float32, rng=None) -> np.ndarray:
    """He (Kaiming) normal init for ReLU: N(0, 2 / fan_in)."""
    fan_in, fan_out = _fans(fan_in, fan_out)
    rng = _rng if rng is None else rng
    w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
    return w.astype(V.float_dtype("dtype", dtype))


def xavier(fan_in: int, fan_out: int, dtype=np.float32, rng=None) -> np.ndarray:
    """Xavier (Glorot) normal init for sigmoid/tanh: N(0, 2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(fan_in, fan_out)
    rng = _rng if rng is None else rng
    w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / (fan_in + fan_out))
    return w.astype(V.float_dtype("dtype", dtype))


INITIALIZERS = {"he": he, "xavier": xavier}
