"""Bad input through every public function and module method: each raises
ValueError/TypeError naming the argument. Non-contiguous and read-only
inputs work and are never written through."""

import numpy as np
import pytest

import fastnn
from fastnn import functional as F
from fastnn import init, nn

f32, f64 = np.float32, np.float64
# Module backward methods pass their ``dout`` to functional's ``dy``.
DOUT = r"\b(dy|dout)\b"


def a(*shape, dtype=f32, fill=0.5):
    return np.full(shape, fill, dtype)


def labels(n=4, c=5):
    return np.arange(n) % c


def fwd(module, x):
    module.forward(x)
    return module


# (id, call, exception, message pattern)
CASES = []


def case(id_, exc, match):
    def register(fn):
        CASES.append(pytest.param(fn, exc, match, id=id_))
        return fn
    return register


# ---------------------------------------------------------------- mismatched shapes
case("linear x/W features", ValueError, r"x has 5 features")(
    lambda: F.linear(a(4, 5), a(6, 3)))
case("linear b shape", ValueError, r"\bb must have shape \(3,\)")(
    lambda: F.linear(a(4, 5), a(5, 3), a(4)))
case("linear_backward dy shape", ValueError, r"\bdy must have shape \(4, 3\)")(
    lambda: F.linear_backward(a(4, 4), a(4, 5), a(5, 3)))
case("linear_backward x/W", ValueError, r"\bx has 6 features")(
    lambda: F.linear_backward(a(4, 3), a(4, 6), a(5, 3)))
case("linear_backward dW buffer", ValueError, r"\bdW must have shape")(
    lambda: F.linear_backward(a(4, 3), a(4, 5), a(5, 3), dW=a(3, 5)))
case("linear out buffer", ValueError, r"\bout must have shape \(4, 3\)")(
    lambda: F.linear(a(4, 5), a(5, 3), out=a(3, 4)))
case("activation_backward dy shape", ValueError, r"\bdy must have the shape")(
    lambda: F.activation_backward("relu", a(4, 4), a(4, 5)))
case("softmax_xent targets shape", ValueError, r"\by must have shape \(4, 5\)")(
    lambda: F.softmax_xent(a(4, 5), np.eye(6, dtype=f32)[:4]))
case("softmax_xent_backward labels length", ValueError, r"\by must have shape \(4,\)")(
    lambda: F.softmax_xent_backward(a(4, 5), labels(3)))
case("batchnorm gamma shape", ValueError, r"\bgamma\b")(
    lambda: F.batchnorm(a(4, 5), a(4), a(5)))
case("batchnorm beta shape", ValueError, r"\bbeta\b")(
    lambda: F.batchnorm(a(4, 5), a(5), a(6)))
case("batchnorm running_mean shape", ValueError, r"\brunning_mean must have shape \(5,\)")(
    lambda: F.batchnorm(a(4, 5), a(5), a(5), running_mean=a(4), running_var=a(5)))
case("batchnorm running_var shape", ValueError, r"\brunning_var must have shape \(5,\)")(
    lambda: F.batchnorm(a(4, 5), a(5), a(5), running_mean=a(5), running_var=a(6)))
case("batchnorm eval running_mean shape", ValueError, r"\brunning_mean must have shape \(5,\)")(
    lambda: F.batchnorm(a(4, 5), a(5), a(5), training=False, running_mean=a(4), running_var=a(5)))
case("batchnorm eval running_var dtype", TypeError, r"\brunning_var has dtype float64")(
    lambda: F.batchnorm(a(4, 5), a(5), a(5), training=False, running_mean=a(5), running_var=a(5, dtype=f64)))
case("batchnorm eval without running stats", ValueError, r"running_mean and running_var")(
    lambda: F.batchnorm(a(4, 5), a(5), a(5), training=False))
case("batchnorm_backward dy shape", ValueError, r"\bdy must have the shape of x")(
    lambda: F.batchnorm_backward(a(4, 4), a(4, 5), a(5), a(5), a(5)))
case("batchnorm_backward mean shape", ValueError, r"\bmean must have shape \(5,\)")(
    lambda: F.batchnorm_backward(a(4, 5), a(4, 5), a(4), a(5), a(5)))
case("batchnorm_backward rstd shape", ValueError, r"\brstd must have shape \(5,\)")(
    lambda: F.batchnorm_backward(a(4, 5), a(4, 5), a(5), a(6), a(5)))
case("layernorm gamma shape", ValueError, r"\bgamma\b")(
    lambda: F.layernorm(a(4, 5), a(4), a(5)))
case("layernorm_backward dy shape", ValueError, r"\bdy must have the shape of x")(
    lambda: F.layernorm_backward(a(4, 4), a(4, 5), a(4), a(4), a(5)))
case("layernorm_backward mean size", ValueError, r"\bmean and rstd must have 4 entries")(
    lambda: F.layernorm_backward(a(4, 5), a(4, 5), a(5), a(4), a(5)))
case("layernorm_backward gamma shape", ValueError, r"\bgamma must have shape \(5,\)")(
    lambda: F.layernorm_backward(a(4, 5), a(4, 5), a(4), a(4), a(4)))
case("dropout_backward mask shape", ValueError, r"\bmask\b")(
    lambda: F.dropout_backward(a(4, 5), np.ones((4, 4), np.uint8), 0.5))
case("dropout_backward mask dtype", (ValueError, TypeError), r"\bmask\b")(
    lambda: F.dropout_backward(a(4, 5), a(4, 5), 0.5))
case("Linear.forward features", ValueError, r"\bx must have shape \(N, 5\)")(
    lambda: nn.Linear(5, 3)(a(4, 6)))
case("Linear.backward dout shape", ValueError, DOUT)(
    lambda: fwd(nn.Linear(5, 3), a(4, 5)).backward(a(4, 4)))
case("ReLU.backward dout shape", ValueError, DOUT)(
    lambda: fwd(nn.ReLU(), a(4, 5)).backward(a(4, 4)))
case("Sigmoid.backward dout shape", ValueError, DOUT)(
    lambda: fwd(nn.Sigmoid(), a(4, 5)).backward(a(4, 4)))
case("Dropout.backward dout shape", ValueError, DOUT)(
    lambda: fwd(nn.Dropout(0.5), a(4, 5)).backward(a(4, 4)))
case("BatchNorm.forward dim", ValueError, r"\bx must have shape \(N, 5\)")(
    lambda: nn.BatchNorm(5)(a(4, 6)))
case("BatchNorm.backward dout shape", ValueError, DOUT)(
    lambda: fwd(nn.BatchNorm(5), a(4, 5)).backward(a(4, 4)))
case("LayerNorm.forward dim", ValueError, r"\bx's last axis must have size 5")(
    lambda: nn.LayerNorm(5)(a(4, 6)))
case("LayerNorm.backward dout shape", ValueError, DOUT)(
    lambda: fwd(nn.LayerNorm(5), a(4, 5)).backward(a(4, 4)))
case("SoftmaxCrossEntropy labels length", ValueError, r"\by must have shape \(4,\)")(
    lambda: nn.SoftmaxCrossEntropy().forward(a(4, 5), labels(5)))
case("Sequential.forward features", ValueError, r"\bx must have shape \(N, 5\)")(
    lambda: nn.Sequential([nn.Linear(5, 3), nn.ReLU()])(a(4, 6)))
case("Sequential.backward dout shape", ValueError, DOUT)(
    lambda: fwd(nn.Sequential([nn.Linear(5, 3), nn.ReLU()]), a(4, 5)).backward(a(4, 4)))
case("Sequential(fuse=False).backward dout shape", ValueError, DOUT)(
    lambda: fwd(nn.Sequential([nn.Linear(5, 3), nn.ReLU()], fuse=False), a(4, 5)).backward(a(4, 4)))

# ---------------------------------------------------------------------- wrong ndim
case("linear x 1-D", ValueError, r"\bx must be 2-D")(lambda: F.linear(a(5), a(5, 3)))
case("linear W 3-D", ValueError, r"\bW must be 2-D")(lambda: F.linear(a(4, 5), a(5, 3, 1)))
case("linear b 2-D", ValueError, r"\bb must be 1-D")(lambda: F.linear(a(4, 5), a(5, 3), a(1, 3)))
case("activation scalar", ValueError, r"\bx must be an array")(lambda: F.relu(1.5))
case("softmax_xent logits 1-D", ValueError, r"\blogits must be 2-D")(
    lambda: F.softmax_xent(a(5), labels(1)))
case("softmax_xent labels 2-D int", TypeError, r"\by\b")(
    lambda: F.softmax_xent(a(4, 5), np.zeros((4, 5), int)))
case("softmax_xent labels 3-D", ValueError, r"\by\b")(
    lambda: F.softmax_xent(a(4, 5), np.zeros((4, 5, 1), int)))
case("batchnorm x 3-D", ValueError, r"\bx must be 2-D")(lambda: F.batchnorm(a(4, 5, 1), a(1), a(1)))
case("batchnorm gamma 2-D", ValueError, r"\bgamma must be 1-D")(
    lambda: F.batchnorm(a(4, 5), a(1, 5), a(5)))
case("layernorm gamma 2-D", ValueError, r"\bgamma must be 1-D")(
    lambda: F.layernorm(a(4, 5), a(1, 5), a(5)))
case("Linear.forward x 1-D", ValueError, r"\bx must be 2-D")(lambda: nn.Linear(5, 3)(a(5)))
case("BatchNorm.forward x 1-D", ValueError, r"\bx must be 2-D")(lambda: nn.BatchNorm(5)(a(5)))
case("SoftmaxCrossEntropy logits 3-D", ValueError, r"\blogits must be 2-D")(
    lambda: nn.SoftmaxCrossEntropy()(a(4, 5, 1), labels()))


# ----------------------------------------------- integer / float16 / bool arrays
def _bad_dtype_cases():
    for dt in (np.int64, np.float16, np.bool_):
        n = np.dtype(dt).name
        bad = lambda *s, dt=dt: np.zeros(s, dt)  # noqa: E731
        yield f"linear x {n}", lambda bad=bad: F.linear(bad(4, 5), a(5, 3)), r"\bx\b"
        yield f"linear W {n}", lambda bad=bad: F.linear(a(4, 5), bad(5, 3)), r"\bW\b"
        yield f"linear b {n}", lambda bad=bad: F.linear(a(4, 5), a(5, 3), bad(3)), r"\bb\b"
        yield f"linear_backward dy {n}", lambda bad=bad: F.linear_backward(bad(4, 3), a(4, 5), a(5, 3)), r"\bdy\b"
        yield f"activation x {n}", lambda bad=bad: F.gelu(bad(4, 5)), r"\bx\b"
        yield f"activation_backward dy {n}", lambda bad=bad: F.activation_backward("silu", bad(4, 5), a(4, 5)), r"\bdy\b"
        yield f"activation_backward y {n}", lambda bad=bad: F.activation_backward("tanh", a(4, 5), bad(4, 5)), r"\by\b"
        yield f"softmax_xent logits {n}", lambda bad=bad: F.softmax_xent(bad(4, 5), labels()), r"\blogits\b"
        yield f"softmax_xent_backward probs {n}", lambda bad=bad: F.softmax_xent_backward(bad(4, 5), labels()), r"\bprobs\b"
        yield f"batchnorm x {n}", lambda bad=bad: F.batchnorm(bad(4, 5), a(5), a(5)), r"\bx\b"
        yield f"batchnorm gamma {n}", lambda bad=bad: F.batchnorm(a(4, 5), bad(5), a(5)), r"\bgamma\b"
        yield f"batchnorm running_var {n}", lambda bad=bad: F.batchnorm(a(4, 5), a(5), a(5), running_mean=a(5), running_var=bad(5)), r"\brunning_var\b"
        yield f"batchnorm_backward rstd {n}", lambda bad=bad: F.batchnorm_backward(a(4, 5), a(4, 5), a(5), bad(5), a(5)), r"\brstd\b"
        yield f"layernorm x {n}", lambda bad=bad: F.layernorm(bad(4, 5), a(5), a(5)), r"\bx\b"
        yield f"layernorm beta {n}", lambda bad=bad: F.layernorm(a(4, 5), a(5), bad(5)), r"\bbeta\b"
        yield f"layernorm_backward mean {n}", lambda bad=bad: F.layernorm_backward(a(4, 5), a(4, 5), bad(4), a(4), a(5)), r"\bmean\b"
        yield f"dropout x {n}", lambda bad=bad: F.dropout(bad(4, 5), 0.5, seed=1, step=1), r"\bx\b"
        yield f"dropout_backward dy {n}", lambda bad=bad: F.dropout_backward(bad(4, 5), np.ones((4, 5), np.uint8), 0.5), r"\bdy\b"
        yield f"Linear.forward x {n}", lambda bad=bad: nn.Linear(5, 3)(bad(4, 5)), r"\bx\b"
        yield f"ReLU.forward x {n}", lambda bad=bad: nn.ReLU()(bad(4, 5)), r"\bx\b"
        yield f"LayerNorm.forward x {n}", lambda bad=bad: nn.LayerNorm(5)(bad(4, 5)), r"\bx\b"
        yield f"Dropout.forward x {n}", lambda bad=bad: nn.Dropout(0.5)(bad(4, 5)), r"\bx\b"
        yield f"Linear.backward dout {n}", lambda bad=bad: fwd(nn.Linear(5, 3), a(4, 5)).backward(bad(4, 3)), DOUT
        yield f"Sequential.backward dout {n}", lambda bad=bad: fwd(nn.Sequential([nn.Linear(5, 3), nn.ReLU()]), a(4, 5)).backward(bad(4, 3)), DOUT


for _id, _fn, _match in _bad_dtype_cases():
    case(_id, TypeError, _match)(_fn)


# ------------------------------------------------------- mixed float32 / float64
case("linear x f64, W f32", TypeError, r"\bx has dtype float64 but float32")(
    lambda: F.linear(a(4, 5, dtype=f64), a(5, 3)))
case("linear b f64, W f32", TypeError, r"\bb has dtype float64")(
    lambda: F.linear(a(4, 5), a(5, 3), a(3, dtype=f64)))
case("linear_backward dy f64", TypeError, r"\bdy has dtype float64")(
    lambda: F.linear_backward(a(4, 3, dtype=f64), a(4, 5), a(5, 3)))
case("linear out f64", TypeError, r"\bout must have dtype float32")(
    lambda: F.linear(a(4, 5), a(5, 3), out=a(4, 3, dtype=f64)))
case("activation_backward dy f64, x f32", TypeError, r"\bdy has dtype float64")(
    lambda: F.activation_backward("relu", a(4, 5, dtype=f64), a(4, 5)))
case("softmax_xent targets f64, logits f32", TypeError, r"\by has dtype float64")(
    lambda: F.softmax_xent(a(4, 5), np.eye(5)[:4]))
case("batchnorm gamma f64, x f32", TypeError, r"\bgamma has dtype float64")(
    lambda: F.batchnorm(a(4, 5), a(5, dtype=f64), a(5)))
case("batchnorm running_mean f64, x f32", TypeError, r"\brunning_mean must have dtype float32")(
    lambda: F.batchnorm(a(4, 5), a(5), a(5), running_mean=a(5, dtype=f64), running_var=a(5)))
case("batchnorm_backward mean f64", TypeError, r"\bmean has dtype float64")(
    lambda: F.batchnorm_backward(a(4, 5), a(4, 5), a(5, dtype=f64), a(5), a(5)))
case("layernorm beta f64, x f32", TypeError, r"\bbeta has dtype float64")(
    lambda: F.layernorm(a(4, 5), a(5), a(5, dtype=f64)))
case("layernorm_backward dy f64", TypeError, r"\bdy has dtype float64")(
    lambda: F.layernorm_backward(a(4, 5, dtype=f64), a(4, 5), a(4), a(4), a(5)))
case("Linear f32, x f64", TypeError, r"\bx has dtype float64 but float32")(
    lambda: nn.Linear(5, 3)(a(4, 5, dtype=f64)))
case("Linear f64, x f32", TypeError, r"\bx has dtype float32 but float64")(
    lambda: nn.Linear(5, 3, dtype=f64)(a(4, 5)))
case("BatchNorm f32, x f64", TypeError, r"\bx has dtype float64")(
    lambda: nn.BatchNorm(5)(a(4, 5, dtype=f64)))
case("LayerNorm f32, x f64", TypeError, r"\bx has dtype float64")(
    lambda: nn.LayerNorm(5)(a(4, 5, dtype=f64)))
case("Tanh.backward dout f64, x f32", TypeError, DOUT)(
    lambda: fwd(nn.Tanh(), a(4, 5)).backward(a(4, 5, dtype=f64)))
case("Linear.backward dout f64", TypeError, DOUT)(
    lambda: fwd(nn.Linear(5, 3), a(4, 5)).backward(a(4, 3, dtype=f64)))
case("Sequential f32, x f64", TypeError, r"\bx has dtype float64")(
    lambda: nn.Sequential([nn.Linear(5, 3), nn.ReLU()])(a(4, 5, dtype=f64)))
case("SoftmaxCrossEntropy one-hot f64, logits f32", TypeError, r"\by has dtype float64")(
    lambda: nn.SoftmaxCrossEntropy()(a(4, 5), np.eye(5)[:4]))

# --------------------------------------------------------------------------- labels
for _fname, _call in (
    ("softmax_xent", lambda y: F.softmax_xent(a(4, 5), y)),
    ("softmax_xent_backward", lambda y: F.softmax_xent_backward(a(4, 5, fill=0.2), y)),
    ("SoftmaxCrossEntropy", lambda y: nn.SoftmaxCrossEntropy().forward(a(4, 5), y)),
):
    case(f"{_fname} label == C", ValueError, r"\by must be class indices in \[0, 5\); y\[2\] = 5")(
        lambda c=_call: c(np.array([0, 1, 5, 2])))
    case(f"{_fname} label negative", ValueError, r"\by must be class indices in \[0, 5\); y\[0\] = -1")(
        lambda c=_call: c(np.array([-1, 1, 4, 2])))
    case(f"{_fname} float labels", TypeError, r"\by must hold integer class indices")(
        lambda c=_call: c(np.array([0.0, 1.0, 2.0, 3.0])))
    case(f"{_fname} float32 labels", TypeError, r"\by must hold integer class indices")(
        lambda c=_call: c(np.array([0, 1, 2, 3], f32)))
    case(f"{_fname} bool labels", TypeError, r"\by must hold integer class indices")(
        lambda c=_call: c(np.array([True, False, True, False])))
    case(f"{_fname} labels too short", ValueError, r"\by must have shape \(4,\)")(
        lambda c=_call: c(np.array([0, 1, 2])))
    case(f"{_fname} labels too long", ValueError, r"\by must have shape \(4,\)")(
        lambda c=_call: c(np.array([0, 1, 2, 3, 4])))
    case(f"{_fname} labels not an array", TypeError, r"\by must be a numpy array")(
        lambda c=_call: c("0123"))
case("soft targets rows not summing to 1", ValueError, r"each row of y must sum to 1")(
    lambda: F.softmax_xent(a(4, 5), a(4, 5, fill=0.3)))
case("soft targets negative", ValueError, r"\by must be finite and non-negative")(
    lambda: F.softmax_xent(a(4, 5), np.tile(np.array([1.5, -0.5, 0, 0, 0], f32), (4, 1))))
case("soft targets NaN", ValueError, r"\by must be finite")(
    lambda: F.softmax_xent(a(4, 5), a(4, 5, fill=np.nan)))

# ---------------------------------------------------------------------- empty batch
case("linear empty batch", ValueError, r"\bx must have at least 1 row.*empty batch")(
    lambda: F.linear(a(0, 5), a(5, 3)))
case("linear zero features", ValueError, r"\b(x|W)\b.*empty|empty.*\b(x|W)\b|\bW must have at least 1 row")(
    lambda: F.linear(a(4, 0), a(0, 3)))
case("linear_backward empty batch", ValueError, r"\bx must have at least 1 row")(
    lambda: F.linear_backward(a(0, 3), a(0, 5), a(5, 3)))
case("activation empty", ValueError, r"\bx must have at least 1 row")(lambda: F.relu(a(0, 5)))
case("activation zero width", ValueError, r"\bx is empty")(lambda: F.relu(a(3, 0)))
case("activation_backward empty", ValueError, r"\bx must have at least 1 row")(
    lambda: F.activation_backward("gelu", a(0, 5), a(0, 5)))
case("softmax_xent empty batch", ValueError, r"\blogits must have at least 1 row")(
    lambda: F.softmax_xent(a(0, 5), np.zeros(0, int)))
case("softmax_xent zero classes", ValueError, r"\blogits is empty")(
    lambda: F.softmax_xent(a(4, 0), labels()))
case("batchnorm empty batch", ValueError, r"\bx must have at least 1 row")(
    lambda: F.batchnorm(a(0, 5), a(5), a(5)))
case("batchnorm one sample in training", ValueError, r"more than 1 sample.*shape \(1, 5\)")(
    lambda: F.batchnorm(a(1, 5), a(5), a(5)))
case("layernorm empty batch", ValueError, r"\bx must have at least 1 row")(
    lambda: F.layernorm(a(0, 5), a(5), a(5)))
case("dropout empty batch", ValueError, r"\bx must have at least 1 row")(
    lambda: F.dropout(a(0, 5), 0.5, seed=1, step=1))
case("Linear.forward empty batch", ValueError, r"\bx must have at least 1 row")(
    lambda: nn.Linear(5, 3)(a(0, 5)))
case("BatchNorm.forward empty batch", ValueError, r"\bx must have at least 1 row")(
    lambda: nn.BatchNorm(5)(a(0, 5), training=False))
case("BatchNorm.forward one sample in training", ValueError, r"more than 1 sample")(
    lambda: nn.BatchNorm(5)(a(1, 5), training=True))
case("SoftmaxCrossEntropy empty batch", ValueError, r"\blogits must have at least 1 row")(
    lambda: nn.SoftmaxCrossEntropy()(a(0, 5), np.zeros(0, int)))
case("Sequential empty batch", ValueError, r"\bx must have at least 1 row")(
    lambda: nn.Sequential([nn.Linear(5, 3), nn.ReLU()])(a(0, 5)))

# ----------------------------------------------------------------- hyperparameters
for _p in (-0.1, 1.0, 1.5, float("nan"), float("inf")):
    _m = r"\bp must be (in \[0, 1\)|finite)"
    case(f"dropout p={_p}", ValueError, _m)(lambda p=_p: F.dropout(a(4, 5), p, seed=1, step=1))
    case(f"dropout_backward p={_p}", ValueError, _m)(
        lambda p=_p: F.dropout_backward(a(4, 5), np.ones((4, 5), np.uint8), p))
    case(f"Dropout(p={_p})", ValueError, _m)(lambda p=_p: nn.Dropout(p))
case("Dropout p str", TypeError, r"\bp must be a real number")(lambda: nn.Dropout("0.5"))
case("Dropout p None", TypeError, r"\bp must be a real number")(lambda: nn.Dropout(None))
case("Dropout seed str", TypeError, r"\bseed must be an int")(lambda: nn.Dropout(0.5, seed="1"))
case("Dropout seed float", TypeError, r"\bseed must be an int")(lambda: nn.Dropout(0.5, seed=1.5))
case("dropout seed None", TypeError, r"\bseed\b")(lambda: F.dropout(a(4, 5), 0.5, seed=None, step=1))
case("dropout step str", TypeError, r"\bstep\b")(lambda: F.dropout(a(4, 5), 0.5, seed=1, step="2"))

for _eps in (0.0, -1e-5, float("nan")):
    _m = r"\beps must be (in \(0|finite)"
    case(f"batchnorm eps={_eps}", ValueError, _m)(lambda e=_eps: F.batchnorm(a(4, 5), a(5), a(5), eps=e))
    case(f"layernorm eps={_eps}", ValueError, _m)(lambda e=_eps: F.layernorm(a(4, 5), a(5), a(5), eps=e))
    case(f"BatchNorm(eps={_eps})", ValueError, _m)(lambda e=_eps: nn.BatchNorm(5, eps=e))
    case(f"LayerNorm(eps={_eps})", ValueError, _m)(lambda e=_eps: nn.LayerNorm(5, eps=e))
case("LayerNorm eps str", TypeError, r"\beps must be a real number")(lambda: nn.LayerNorm(5, eps="1e-5"))

for _mom in (-0.1, 1.1, float("nan")):
    _m = r"\bmomentum must be (in \[0, 1\]|finite)"
    case(f"batchnorm momentum={_mom}", ValueError, _m)(
        lambda m=_mom: F.batchnorm(a(4, 5), a(5), a(5), running_mean=a(5), running_var=a(5), momentum=m))
    case(f"BatchNorm(momentum={_mom})", ValueError, _m)(lambda m=_mom: nn.BatchNorm(5, momentum=m))
case("BatchNorm momentum bool", TypeError, r"\bmomentum must be a real number")(
    lambda: nn.BatchNorm(5, momentum=True))

case("leaky_relu alpha str", TypeError, r"\balpha must be a real number")(
    lambda: F.leaky_relu(a(4, 5), alpha="0.1"))
case("LeakyReLU alpha nan", ValueError, r"\balpha must be finite")(lambda: nn.LeakyReLU(float("nan")))
case("activation name", ValueError, r"\bactivation must be one of")(lambda: F.activation("swish2", a(4, 5)))
case("SoftmaxCrossEntropy.backward dout str", TypeError, r"\bdout must be a real number")(
    lambda: fwd_ce().backward("2"))

# ---------------------------------------------------------- constructors, backends
case("Linear in_features 0", ValueError, r"\bin_features must be positive")(lambda: nn.Linear(0, 3))
case("Linear out_features -1", ValueError, r"\bout_features must be positive")(lambda: nn.Linear(3, -1))
case("Linear in_features float", TypeError, r"\bin_features must be an int")(lambda: nn.Linear(3.0, 2))
case("Linear init", ValueError, r"\binit must be one of")(lambda: nn.Linear(3, 2, init="orthogonal"))
case("Linear dtype int", TypeError, r"\bdtype must be float32 or float64")(lambda: nn.Linear(3, 2, dtype=np.int32))
case("Linear dtype float16", TypeError, r"\bdtype must be float32 or float64")(
    lambda: nn.Linear(3, 2, dtype=np.float16))
case("BatchNorm dim 0", ValueError, r"\bdim must be positive")(lambda: nn.BatchNorm(0))
case("LayerNorm dim str", TypeError, r"\bdim must be an int")(lambda: nn.LayerNorm("8"))
case("init.he fan_in 0", ValueError, r"\bfan_in must be positive")(lambda: init.he(0, 3))
case("init.xavier dtype", TypeError, r"\bdtype must be float32 or float64")(
    lambda: init.xavier(3, 3, dtype=np.int8))
case("Sequential non-module", TypeError, r"layers\[1\] must be a fastnn Module")(
    lambda: nn.Sequential([nn.Linear(3, 2), np.tanh]))
case("set_backend", ValueError, r"\bbackend must be one of")(lambda: fastnn.set_backend("torch"))
case("use_backend", ValueError, r"\bbackend must be one of")(lambda: fastnn.use_backend("cuda").__enter__())
case("functional backend=", ValueError, r"\bbackend must be one of")(
    lambda: F.relu(a(4, 5), backend="jax"))
case("module.backend =", ValueError, r"\bbackend must be one of")(
    lambda: setattr(nn.Linear(3, 2), "backend", "numbaa"))
case("x a string", TypeError, r"\bx must be a float32 or float64 array")(lambda: F.relu("abc"))
case("x a dict", TypeError, r"\bx must be a numpy array")(lambda: F.relu({}))
case("x None", TypeError, r"\bx must be a numpy array")(lambda: nn.Linear(3, 2)(None))
case("out read-only", ValueError, r"\bout is read-only")(
    lambda: F.relu(a(4, 5), out=readonly(a(4, 5))))
case("out non-contiguous", ValueError, r"\bout must be C-contiguous")(
    lambda: F.relu(a(4, 5), out=a(4, 10)[:, ::2]))


def fwd_ce():
    ce = nn.SoftmaxCrossEntropy()
    ce.forward(a(4, 5), labels())
    return ce


def readonly(x):
    x.setflags(write=False)
    return x


@pytest.mark.parametrize("call,exc,match", CASES)
def test_bad_input_raises_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_use_backend_restores_after_error():
    before = fastnn.get_backend()
    with pytest.raises(ValueError):
        with fastnn.use_backend("numpy"):
            F.relu(a(0, 5))
    assert fastnn.get_backend() == before


def test_check_finite_names_the_array():
    x = a(4, 5)
    x[1, 2] = np.nan
    with fastnn.check_finite():
        with pytest.raises(FloatingPointError, match=r"'x'"):
            F.linear(x, a(5, 3))
    assert F.linear(x, a(5, 3)).shape == (4, 3)  # off again: NaN propagates quietly


# --------------------------------------- non-contiguous and read-only inputs


def _strided(x):
    """A non-contiguous view with the same values as x."""
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    big[..., ::2] = x
    v = big[..., ::2]
    assert not v.flags.c_contiguous
    return v


def _readonly(x):
    v = x.copy()
    v.setflags(write=False)
    return v


def _ops(rng):
    """(name, fn(*inputs), inputs) for every functional op; inputs float32."""
    x = rng.standard_normal((6, 5)).astype(f32)
    W = rng.standard_normal((5, 3)).astype(f32)
    b = rng.standard_normal(3).astype(f32)
    dy3 = rng.standard_normal((6, 3)).astype(f32)
    dy5 = rng.standard_normal((6, 5)).astype(f32)
    g = (1 + rng.standard_normal(5) * 0.1).astype(f32)
    beta = rng.standard_normal(5).astype(f32)
    y_lab = np.arange(6) % 5
    onehot = np.eye(5, dtype=f32)[y_lab]
    _, mean_b, rstd_b = F.batchnorm(x, g, beta)
    _, mean_l, rstd_l = F.layernorm(x, g, beta)
    probs = F.softmax_xent(x, y_lab)[1]
    mask = F.dropout(x, 0.5, seed=1, step=1)[1]
    rm, rv = np.zeros(5, f32), np.ones(5, f32)
    ops = [
        ("linear", lambda x, W, b, **k: F.linear(x, W, b, **k), (x, W, b)),
        ("linear_backward", lambda dy, x, W, **k: F.linear_backward(dy, x, W, **k), (dy3, x, W)),
        ("softmax_xent labels", lambda z, y, **k: F.softmax_xent(z, y, **k)[:2], (x, y_lab)),
        ("softmax_xent targets", lambda z, t, **k: F.softmax_xent(z, t, **k)[:2], (x, onehot)),
        ("softmax_xent_backward", lambda p, y, **k: F.softmax_xent_backward(p, y, **k), (probs, y_lab)),
        ("batchnorm", lambda x, g, be, **k: F.batchnorm(x, g, be, **k), (x, g, beta)),
        ("batchnorm eval", lambda x, g, be, m, v, **k: F.batchnorm(
            x, g, be, training=False, running_mean=m, running_var=v, **k)[0], (x, g, beta, rm, rv)),
        ("batchnorm_backward", lambda *i, **k: F.batchnorm_backward(*i, **k), (dy5, x, mean_b, rstd_b, g)),
        ("layernorm", lambda x, g, be, **k: F.layernorm(x, g, be, **k), (x, g, beta)),
        ("layernorm_backward", lambda *i, **k: F.layernorm_backward(*i, **k), (dy5, x, mean_l, rstd_l, g)),
        ("dropout", lambda x, **k: F.dropout(x, 0.3, seed=3, step=2, **k), (x,)),
        ("dropout_backward", lambda dy, m, **k: F.dropout_backward(dy, m, 0.5, **k), (dy5, mask)),
    ]
    for name in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu"):
        ops.append((name, lambda x, name=name, **k: F.activation(name, x, **k), (x,)))
        ops.append((name + "_backward",
                    lambda dy, x, name=name, **k: F.activation_backward(name, dy, x, **k), (dy5, x)))
    return ops


def _flat(res):
    res = res if isinstance(res, tuple) else (res,)
    return [r for r in res if r is not None]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("layout", ["strided", "readonly"])
def test_non_contiguous_and_read_only_inputs(layout, backend):
    make = _strided if layout == "strided" else _readonly
    for name, fn, inputs in _ops(np.random.default_rng(0)):
        expect = _flat(fn(*inputs, backend=backend))
        views = [make(i) if i.ndim >= 1 and i.dtype.kind in "fiu" and i.size > 1 else i for i in inputs]
        before = [v.copy() for v in views]
        got = _flat(fn(*views, backend=backend))
        assert len(got) == len(expect), name
        for g, e in zip(got, expect):
            np.testing.assert_array_equal(g, e, err_msg=f"{name} ({layout}, {backend})")
        for v, bfr in zip(views, before):
            np.testing.assert_array_equal(v, bfr, err_msg=f"{name} wrote into an input")


@pytest.mark.parametrize("layout", ["strided", "readonly"])
def test_modules_accept_non_contiguous_and_read_only_inputs(layout):
    make = _strided if layout == "strided" else _readonly
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 6)).astype(f32)
    y = np.arange(8) % 4
    results = []
    for xin, yin in ((x, y), (make(x), make(y))):
        fastnn.manual_seed(0)
        model = nn.Sequential([nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.BatchNorm(8),
                               nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 4)])
        before = xin.copy()
        ce = nn.SoftmaxCrossEntropy()
        out = model(xin)
        loss = ce(out, yin)
        dout = ce.backward()
        dx = model.backward(make(dout) if xin is not x else dout)
        np.testing.assert_array_equal(xin, before)
        results.append((loss, out, dx, [p.grad.copy() for p in model.parameters()]))
    # The contiguous input runs the compiled step, the strided and read-only
    # ones layer by layer: the same kernels, equal to rounding (fastnn/_step.py).
    (l0, o0, d0, g0), (l1, o1, d1, g1) = results
    assert l0 == pytest.approx(l1, rel=1e-6)
    np.testing.assert_allclose(o0, o1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d0, d1, rtol=1e-5, atol=1e-7)
    for p, q in zip(g0, g1):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7)


def _with_backend(module, backend):
    module.backend = backend
    return module


MASKED_LABELS = np.ma.array(np.array([0, 1, 2**30], dtype=np.int32), mask=[0, 0, 1])
MASKED_X = np.ma.array(np.ones((3, 4), f32), mask=np.eye(3, 4, dtype=bool))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("call", [
    lambda b: F.softmax_xent(a(3, 4), MASKED_LABELS, backend=b),
    lambda b: F.softmax_xent_loss(a(3, 4), MASKED_LABELS, backend=b),
    lambda b: _with_backend(nn.SoftmaxCrossEntropy(), b).forward(a(3, 4), MASKED_LABELS),
    lambda b: F.relu(MASKED_X, backend=b),
    lambda b: F.linear(MASKED_X, a(4, 2), a(2), backend=b),
    lambda b: F.relu(a(3, 4), out=np.ma.array(a(3, 4)), backend=b),
], ids=["softmax_xent", "softmax_xent_loss", "module", "relu", "linear", "out"])
def test_masked_arrays_are_refused(call, backend):
    # The mask would be ignored: a masked-out label of 2**30 was read as an index.
    with pytest.raises(TypeError, match=r"\b(y|x|out)\b.*masked array"):
        call(backend)


def _aliasing_calls():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)).astype(f32)
    W = rng.standard_normal((3, 4)).astype(f32)
    x, dy = rng.standard_normal((5, 3)).astype(f32), rng.standard_normal((5, 4)).astype(f32)
    g = np.ones(4, f32)
    xb = rng.standard_normal((5, 4)).astype(f32)
    _, mean, rstd = F.batchnorm(xb, g, np.zeros(4, f32))
    _, lmean, lrstd = F.layernorm(xb, g, np.zeros(4, f32))
    buf = np.zeros(4, f32)
    P = np.zeros((5, 4), f32)
    return [
        ("probs", lambda b: F.softmax_xent(z, np.arange(5) % 4, probs=z, backend=b)),
        ("losses", lambda b: F.softmax_xent(z, np.arange(5) % 4, probs=P, losses=P.reshape(-1)[:5],
                                            backend=b)),
        ("dW", lambda b: F.linear_backward(dy, x, W, dW=W, backend=b)),
        ("db", lambda b: F.linear_backward(dy, x, W, db=dy[0], backend=b)),
        ("dgamma", lambda b: F.batchnorm_backward(xb, xb, mean, rstd, g, dgamma=g, backend=b)),
        ("dbeta", lambda b: F.batchnorm_backward(xb, xb, mean, rstd, g, dgamma=buf, dbeta=buf,
                                                  backend=b)),
        ("dgamma", lambda b: F.layernorm_backward(xb, xb, lmean, lrstd, g, dgamma=g, backend=b)),
        ("mask", lambda b: F.dropout(xb, 0.5, seed=0, step=1,
                                     mask=xb.view(np.uint8).reshape(-1)[:20].reshape(5, 4), backend=b)),
    ]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("case", range(8))
def test_output_buffers_that_overlap_what_the_kernel_reads_are_refused(case, backend):
    # e.g. probs=logits: the kernel overwrote the logits with the probabilities and then
    # read the label's logit from them (a wrong loss on one backend, the right one on the other)
    name, call = _aliasing_calls()[case]
    with pytest.raises(ValueError, match=rf"^{name} must not share memory with \w+"):
        call(backend)


def _in_place_calls():
    """(what out may be, a call that writes out = f(the array and the rest)), for every op
    whose out may be an input: the call takes (array, out) and returns out."""
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((5, 4)).astype(f32)
    dy = rng.standard_normal((5, 4)).astype(f32)
    g, b = np.full(4, 1.5, f32), np.full(4, 0.25, f32)
    labels = np.arange(5) % 4
    probs, _ = F.softmax_xent(xb, labels)[1:]
    _, stats, _ = F.softmax_xent_loss(xb, labels)
    mask = F.dropout_mask((5, 4), 0.5, seed=0, step=1)
    kw = dict(seed=0, step=1)
    calls = [("x", lambda v, o, be, act=act: F.activation(act, v, out=o, backend=be)) for act in
             ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu")]
    calls += [("dy", lambda v, o, be: F.activation_backward("silu", v, xb, out=o, backend=be)),
              ("x", lambda v, o, be: F.activation_backward("gelu", dy, v, out=o, backend=be)),
              ("y", lambda v, o, be: F.activation_backward("tanh", dy, v, out=o, backend=be)),
              ("probs", lambda v, o, be: F.softmax_xent_backward(v, labels, out=o, backend=be)),
              ("logits", lambda v, o, be: F.softmax_xent_grad(v, stats, labels, out=o, backend=be)),
              ("pred", lambda v, o, be: F.pointwise_loss_backward("huber", v, dy, out=o, backend=be)),
              ("target", lambda v, o, be: F.pointwise_loss_backward("mse", dy, v, out=o, backend=be)),
              ("x", lambda v, o, be: F.batchnorm(v, g, b, out=o, backend=be)[0]),
              ("x", lambda v, o, be: F.layernorm(v, g, b, out=o, backend=be)[0]),
              ("x", lambda v, o, be: F.dropout_by_key(v, 0.5, out=o, backend=be, **kw)),
              ("x", lambda v, o, be: F.dropout(v, 0.5, out=o, backend=be, **kw)[0]),
              ("dy", lambda v, o, be: F.dropout_backward(v, mask, 0.5, out=o, backend=be))]
    inputs = {"x": xb, "dy": dy, "y": np.tanh(xb), "probs": probs, "logits": xb, "pred": xb, "target": dy}
    return [(name, call, inputs[name]) for name, call in calls]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("case", range(18))
def test_outputs_may_be_an_input_exactly_but_not_overlap_it(case, backend):
    """In place (out is the input) gives the out-of-place result; an out that
    overlaps part of the input (a shifted view of one buffer) is refused
    before any kernel runs: the kernel would read elements it had already
    overwritten (the numba build's answer then differed from NumPy's)."""
    name, call, v = _in_place_calls()[case]
    expected = call(v.copy(), None, backend)
    inplace = v.copy()
    assert call(inplace, inplace, backend) is inplace
    np.testing.assert_allclose(inplace, expected, rtol=1e-6, atol=1e-7)
    buf = np.zeros((v.shape[0] + 1,) + v.shape[1:], v.dtype)
    shifted = buf[1:]
    shifted[...] = v
    with pytest.raises(ValueError, match=rf"^out must be {name} itself or not share memory with it"):
        call(shifted, buf[:-1], backend)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_element_wise_outputs_may_be_their_input(backend):
    x = np.linspace(-2, 2, 12, dtype=f32).reshape(3, 4)
    expected = F.relu(x.copy(), backend=backend)
    y = F.relu(x, out=x, backend=backend)
    assert y is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("name, call", [
    ("alpha", lambda: F.leaky_relu(a(2, 3), alpha=10**400)),
    ("p", lambda: nn.Dropout(10**400)),
    ("eps", lambda: nn.BatchNorm(3, eps=10**400)),
    ("lr", lambda: fastnn.optim.Adam(nn.Linear(2, 2).parameters(), lr=10**400)),
    ("gamma", lambda: fastnn.lr_scheduler.StepLR(
        fastnn.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), 1, gamma=10**400)),
])
def test_ints_beyond_the_float_range_are_refused_by_name(name, call):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_dropout_seed_and_step_are_taken_modulo_2_64():
    x = a(4, 5)
    _, m1 = F.dropout(x, 0.5, seed=-1, step=-2)
    _, m2 = F.dropout(x, 0.5, seed=2**64 - 1, step=2**64 - 2)
    _, m3 = F.dropout(x, 0.5, seed=2**64 + 7, step=3)
    _, m4 = F.dropout(x, 0.5, seed=7, step=3)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(m3, m4)
    with pytest.raises(ValueError, match=r"row_offset"):
        F.dropout(x, 0.5, seed=1, step=1, row_offset=2**62)


def test_accuracy_takes_lists_and_refuses_mismatched_shapes():
    from fastnn import metrics

    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], f32)
    assert metrics.accuracy(out, [1, 0, 0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="accuracy"):
        metrics.accuracy(out, [1, 0])


def test_download_arguments_are_checked_before_any_request(tmp_path):
    from fastnn import data

    with pytest.raises(TypeError, match="base_url"):
        data.download_mnist(tmp_path, base_url=5)
    names = [stem + ".gz" for stem in data.MNIST_FILES]
    with pytest.raises(TypeError, match="checksums"):
        data.download_mnist(tmp_path, base_url="http://127.0.0.1:9/", checksums={n: 5 for n in names})
    with pytest.raises(TypeError, match="checksums"):
        data.download_mnist(tmp_path, base_url="http://127.0.0.1:9/", checksums=5)


def test_soft_targets_may_be_a_list_of_rows():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], f32)
    rows = [[1.0, 0.0, 0.0], [0.25, 0.5, 0.25]]
    loss, _, _ = F.softmax_xent(logits, rows)
    assert loss == pytest.approx(F.softmax_xent(logits, np.array(rows, f32))[0])


@pytest.mark.parametrize("pos_weight", ["ab", {}, np.array([1 + 1j, 2], complex)])
def test_pos_weight_must_be_real_numbers(pos_weight):
    with pytest.raises(TypeError, match="pos_weight"):
        F.bce_with_logits(a(3, 2), a(3, 2), pos_weight=pos_weight)


def test_seeds_and_sequences_are_named_in_errors():
    from fastnn import data, init, lr_scheduler, metrics

    with pytest.raises(ValueError, match="seed"):
        init.manual_seed(-1)
    with pytest.raises(ValueError, match="seed"):
        data.synthetic_mnist(10, 10, seed=-1)
    with pytest.raises(TypeError, match=r"\bX\b"):
        data.batches(3, np.arange(3), 2)
    with pytest.raises(ValueError, match=r"\bx\b.*rectangular"):
        F.relu([[1.0, 2.0], [3.0]])
    sched = lr_scheduler.ReduceLROnPlateau(fastnn.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    for bad in ("abc", "1.0", None, True):
        with pytest.raises(TypeError, match="metric"):
            sched.step(bad)
    sched.step(np.float32(0.5))
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(a(3, 3), np.zeros(3, f32))
    assert metrics.mse(a(3, 1), np.full(3, 0.5, f32)) == 0.0


def test_idx_with_more_dimensions_than_numpy_allows(tmp_path):
    from fastnn import data

    path = tmp_path / "many.idx"
    path.write_bytes(bytes([0, 0, 0x08, 65]) + (1).to_bytes(4, "big") * 65 + b"\x00")
    with pytest.raises(data.IDXFormatError, match="65 dimensions"):
        data.read_idx(path)
