"""fastnn: Numba-compiled neural-network kernels with NumPy references."""

from . import _config  # noqa: F401  (threading setup must come first)
from ._config import get_num_threads, set_num_threads, threading_info
from ._memory import output_pool_info, set_output_pool_limit
from .functional import check_finite, get_backend, set_backend, set_check_finite, use_backend
from .init import manual_seed
from . import functional, init, nn  # noqa: E402
from . import checkpoint, data, optim, regularization, train  # noqa: E402
from . import callbacks, lr_scheduler, metrics  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .train import evaluate, fit, predict, predict_proba  # noqa: E402
from . import onnx  # noqa: E402  (imports the onnx package only when export is called)
from .torch_convert import from_torch, to_torch  # noqa: E402  (torch likewise)

__version__ = "0.1.0"

__all__ = [
    "nn", "functional", "init",
    "data", "optim", "train", "checkpoint", "regularization", "fit", "evaluate", "predict", "save", "load",
    "callbacks", "lr_scheduler", "metrics", "predict_proba",
    "set_backend", "get_backend", "use_backend",
    "set_check_finite", "check_finite", "manual_seed",
    "set_num_threads", "get_num_threads", "threading_info", "set_output_pool_limit", "output_pool_info",
    "onnx", "to_torch", "from_torch",
]
