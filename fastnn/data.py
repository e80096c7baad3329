"""MNIST and Fashion-MNIST data: IDX files, dataset discovery, verified download, batching.

Only NumPy and the standard library are used. The usual entry point is
:func:`load_mnist`; :func:`synthetic_mnist` gives MNIST-shaped fake data when the
real files are not available.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import numbers
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import _validate as V

__all__ = [
    "IDXFormatError",
    "DownloadError",
    "read_idx",
    "write_idx",
    "mnist_search_paths",
    "find_mnist",
    "load_mnist",
    "download_mnist",
    "batches",
    "synthetic_mnist",
    "MNIST_FILES",
    "CHECKSUMS",
]

# ---------------------------------------------------------------------------
# IDX format
# ---------------------------------------------------------------------------


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file."""


class DownloadError(ConnectionError):
    """A dataset file could not be fetched over the network."""


# IDX type codes; all multi-byte values in IDX files are big-endian.
_IDX_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_TO_IDX_CODE = {dt.newbyteorder("="): code for code, dt in _IDX_CODE_TO_DTYPE.items()}

_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian array.

    Compression is detected from the gzip magic bytes, not the file name.
    Raises :class:`IDXFormatError` for anything that is not a complete IDX file.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip data ({exc})") from None

    if len(data) < 4:
        raise IDXFormatError(
            f"{path}: not an IDX file: only {len(data)} bytes, "
            "too short for the 4-byte magic number"
        )
    magic = data[:4]
    code, ndim = magic[2], magic[3]
    if magic[0] != 0 or magic[1] != 0 or code not in _IDX_CODE_TO_DTYPE or ndim == 0:
        raise IDXFormatError(
            f"{path}: not an IDX file: magic bytes {magic.hex(' ')} "
            "(expected 00 00, a type code in {08, 09, 0b, 0c, 0d, 0e}, then ndim >= 1)"
        )
    if ndim > 64:  # NumPy's limit
        raise IDXFormatError(f"{path}: {ndim} dimensions; NumPy arrays have at most 64")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IDXFormatError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_len} bytes, "
            f"file has {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_CODE_TO_DTYPE[code]
    # Python ints: the product cannot overflow, so a bogus header is reported, not wrapped.
    expected = dtype.itemsize
    for d in dims:
        expected *= d
    found = len(data) - header_len
    if found != expected:
        what = "file is truncated" if found < expected else "file has trailing bytes"
        raise IDXFormatError(
            f"{path}: expected {expected} bytes of data for shape {dims} of {dtype.name}, "
            f"found {found} ({what})"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    # astype copies, giving a writable native-endian array that does not pin `data`.
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path, array, compress=None) -> Path:
    """Write ``array`` as an IDX file; gzip it if ``compress`` (default: path ends with .gz).

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    path = Path(path)
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=")
    if native not in _DTYPE_TO_IDX_CODE:
        raise TypeError(
            f"write_idx: array dtype {arr.dtype} has no IDX type code "
            "(use uint8, int8, int16, int32, float32 or float64)"
        )
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"write_idx: array must have 1 to 255 dimensions, got ndim={arr.ndim}")
    if any(d >= 2**32 for d in arr.shape):
        raise ValueError(f"write_idx: dimension too large for IDX: shape {arr.shape}")
    if compress is None:
        compress = path.name.endswith(".gz")
    header = bytes([0, 0, _DTYPE_TO_IDX_CODE[native], arr.ndim])
    header += np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, dtype=native.newbyteorder(">")).tobytes()
    if compress:
        # mtime=0 makes the output byte-for-byte reproducible, so its hash is stable.
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path


# ---------------------------------------------------------------------------
# Locating the dataset
# ---------------------------------------------------------------------------

_KINDS = ("mnist", "fashion")

#: Standard file stems, in the order train images, train labels, test images, test labels.
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Subfolder of FASTNN_DATA_DIR searched for each kind.
_ENV_SUBDIR = {"mnist": "mnist", "fashion": "fashion-mnist"}

# Where Debian's dataset-fashion-mnist package installs the files.
_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_DEFAULT_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

#: SHA-256 of the official .gz files.
#: Fashion-MNIST: the files served at the default URL (md5 8d4fb7e6..., the ones
#: torchvision checks). Debian's dataset-fashion-mnist re-gzips the same data, so
#: its .gz files hash differently; they are only read, never verified, here.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion": {
        "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
    },
}


def _check_kind(kind) -> str:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'mnist' or 'fashion', got {kind!r}")
    return kind


def _cache_dir(kind: str) -> Path | None:
    """``$XDG_CACHE_HOME/fastnn/<kind>`` or ``~/.cache/fastnn/<kind>``; None if neither is known."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "fastnn" / kind
    home = os.environ.get("HOME")
    if home:
        return Path(home) / ".cache" / "fastnn" / kind
    return None


def _candidates(kind: str, data_dir=None) -> list[tuple[Path, str]]:
    """Search locations, in order, each with a note on where it came from."""
    if data_dir is not None:
        return [(Path(data_dir).expanduser(), "data_dir argument")]
    out: list[tuple[Path, str]] = []
    env = os.environ.get("FASTNN_DATA_DIR")
    if env:
        root = Path(env).expanduser()
        out.append((root, "FASTNN_DATA_DIR"))
        out.append((root / _ENV_SUBDIR[kind], "FASTNN_DATA_DIR"))
    cache = _cache_dir(kind)
    if cache is not None:
        out.append((cache, "user cache"))
    if kind == "fashion":
        out.append((_DEBIAN_FASHION_DIR, "Debian package dataset-fashion-mnist"))
    seen: set[Path] = set()
    unique = []
    for path, note in out:
        if path not in seen:
            seen.add(path)
            unique.append((path, note))
    return unique


def mnist_search_paths(kind: str = "mnist", data_dir=None) -> list[Path]:
    """Directories searched for the dataset files, in order.

    With ``data_dir`` only that directory is searched. Otherwise: ``$FASTNN_DATA_DIR``
    and its ``mnist``/``fashion-mnist`` subfolder, the user cache directory, and for
    Fashion-MNIST Debian's ``/usr/share/datasets/fashion-mnist``.
    """
    _check_kind(kind)
    return [path for path, _ in _candidates(kind, data_dir)]


def _locate(directory: Path, stem: str) -> Path | None:
    # Prefer the uncompressed file: it reads faster and is what users get after gunzip.
    for name in (stem, stem + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _missing(directory: Path) -> list[str]:
    return [stem for stem in MNIST_FILES if _locate(directory, stem) is None]


def find_mnist(kind: str = "mnist", data_dir=None) -> Path | None:
    """First directory from :func:`mnist_search_paths` holding all four files, else None."""
    for path in mnist_search_paths(kind, data_dir):
        if not _missing(path):
            return path
    return None


def _label(kind: str) -> str:
    return "Fashion-MNIST" if kind == "fashion" else "MNIST"


def _not_found_message(kind: str) -> str:
    lines = [
        f"Could not find the {_label(kind)} files "
        f"({', '.join(s + '[.gz]' for s in MNIST_FILES)}). Searched:"
    ]
    for path, note in _candidates(kind):
        if path.is_dir():
            state = "missing " + ", ".join(_missing(path))
        else:
            state = "does not exist"
        lines.append(f"  - {path} ({note}; {state})")
    if os.environ.get("FASTNN_DATA_DIR") is None:
        lines.append("  (FASTNN_DATA_DIR is not set)")
    if _cache_dir(kind) is None:
        lines.append("  (no user cache directory: HOME and XDG_CACHE_HOME are unset)")
    lines.append(
        "To fix: pass data_dir='/path/to/files' to load_mnist, set FASTNN_DATA_DIR to the "
        "directory holding them, or call load_mnist(..., download=True) to download them"
        + (f" into {_cache_dir(kind)}" if _cache_dir(kind) is not None else "")
        + "."
    )
    if kind == "fashion":
        lines.append("On Debian/Ubuntu: apt-get install dataset-fashion-mnist")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------

_CHUNK = 1 << 16


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _fetch(url: str, out, timeout: float, offline_hint: str) -> str:
    """Stream ``url`` into the open file ``out``; return the SHA-256 of what was received."""
    # Only network-side failures become DownloadError; local write errors propagate as-is.
    network_errors = (OSError, http.client.HTTPException)  # URLError and timeouts are OSErrors
    h = hashlib.sha256()
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except network_errors as exc:
        raise DownloadError(f"could not download {url}: {_reason(exc)}. {offline_hint}") from exc
    with resp:
        while True:
            try:
                chunk = resp.read(_CHUNK)
            except network_errors as exc:
                raise DownloadError(
                    f"could not download {url}: {_reason(exc)}. {offline_hint}"
                ) from exc
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def download_mnist(dest_dir=None, kind: str = "mnist", base_url=None, timeout=30, *,
                   checksums=None) -> Path:
    """Download the four .gz files into ``dest_dir`` (default: the user cache dir).

    Each file is verified against its SHA-256 (``checksums`` maps file name to hex
    digest and replaces the built-in table) before being moved into place, so a
    final-named file is always complete. Files already present with the right hash
    are skipped. ``base_url`` defaults to ``$FASTNN_MNIST_URL`` or the official mirror.
    Returns the destination directory.
    """
    _check_kind(kind)
    if dest_dir is None:
        dest = _cache_dir(kind)
        if dest is None:
            raise ValueError(
                "dest_dir: no default cache directory (HOME and XDG_CACHE_HOME are unset); "
                "pass dest_dir explicitly"
            )
    else:
        dest = Path(dest_dir).expanduser()
    base = base_url or os.environ.get("FASTNN_MNIST_URL") or _DEFAULT_URLS[kind]
    if not isinstance(base, str):
        raise TypeError(f"base_url must be a str, got {type(base).__name__}")
    if not base.endswith("/"):
        base += "/"
    table = CHECKSUMS[kind] if checksums is None else checksums
    if not isinstance(table, Mapping):
        raise TypeError(f"checksums must map file names to SHA-256 hex digests, got {type(table).__name__}")
    names = [stem + ".gz" for stem in MNIST_FILES]
    absent = [n for n in names if n not in table]
    if absent:
        raise ValueError(f"checksums: no SHA-256 given for {', '.join(absent)}")
    bad = [n for n in names if not isinstance(table[n], str)]
    if bad:
        raise TypeError(f"checksums[{bad[0]!r}] must be a SHA-256 hex digest (str), "
                        f"got {type(table[bad[0]]).__name__}")

    dest.mkdir(parents=True, exist_ok=True)
    offline_hint = (
        f"If this machine is offline, copy the four files ({', '.join(names)}) "
        f"into {dest} or pass data_dir=... to load_mnist."
    )
    for name in names:
        expected = table[name].lower()
        target = dest / name
        if target.is_file() and _sha256(target) == expected:
            continue
        url = base + name
        # The temp file lives in dest so os.replace is an atomic same-filesystem rename.
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = _fetch(url, out, timeout, offline_hint)
            if actual != expected:
                raise ValueError(
                    f"checksum mismatch for {name} downloaded from {url}: "
                    f"expected SHA-256 {expected}, got {actual}"
                )
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    return dest


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _read_split(directory: Path, images_stem: str, labels_stem: str, flatten: bool):
    images_path = _locate(directory, images_stem)
    labels_path = _locate(directory, labels_stem)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (N,), got "
                         f"{labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(
            f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images"
        )
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be in 0..9, found {int(labels.max())}")
    n = len(images)
    X = images.reshape(n, 784) if flatten else images
    X = X.astype(np.float32)
    # Divide rather than multiply by 1/255 so that 255 maps to exactly 1.0.
    np.divide(X, np.float32(255), out=X)
    return X, labels.astype(np.int64)


def load_mnist(data_dir=None, kind: str = "mnist", *, download=False, flatten=True,
               base_url=None, checksums=None, timeout=30):
    """Load MNIST or Fashion-MNIST as ``(X_train, y_train), (X_test, y_test)``.

    X is C-contiguous float32 in [0, 1] of shape (N, 784), or (N, 28, 28) with
    ``flatten=False``; y is int64 in 0..9. With ``data_dir`` only that directory is
    used; otherwise the places in :func:`mnist_search_paths` are tried in order.
    With ``download=True`` missing files are fetched by :func:`download_mnist`
    (into ``data_dir`` if given, else the user cache directory).
    """
    _check_kind(kind)
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        missing = _missing(directory)
        if missing:
            if not download:
                raise FileNotFoundError(
                    f"{_label(kind)} files not found in data_dir {directory}: missing "
                    f"{', '.join(s + '[.gz]' for s in missing)}. Put the files there, or pass "
                    "download=True to download them into it."
                )
            download_mnist(directory, kind, base_url, timeout, checksums=checksums)
    else:
        directory = find_mnist(kind)
        if directory is None:
            if not download:
                raise FileNotFoundError(_not_found_message(kind))
            directory = download_mnist(None, kind, base_url, timeout, checksums=checksums)
    train = _read_split(directory, MNIST_FILES[0], MNIST_FILES[1], flatten)
    test = _read_split(directory, MNIST_FILES[2], MNIST_FILES[3], flatten)
    return train, test


# ---------------------------------------------------------------------------
# Batching and synthetic data
# ---------------------------------------------------------------------------


def _check_count(name: str, value, *, positive: bool) -> int:
    # bool is an Integral but batch_size=True is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < (1 if positive else 0):
        bound = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def batches(X, y, batch_size, shuffle=True, rng=None, drop_last=False):
    """Iterate over ``(X_batch, y_batch)`` pairs along the first axis.

    Shuffled batches are fresh arrays (gathered with ``take``); unshuffled ones are
    views. ``rng`` is anything ``np.random.default_rng`` accepts (None, seed, Generator).
    Arguments are checked when called, not on first ``next()``.
    """
    batch_size = _check_count("batch_size", batch_size, positive=True)
    for name, a in (("X", X), ("y", y)):
        if not hasattr(a, "__len__") or not hasattr(a, "__getitem__"):
            raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same length, got len(X)={len(X)}, len(y)={len(y)}")
    n = len(X)
    order = V.seeded_rng("rng", rng).permutation(n) if shuffle else None
    return _batch_iter(X, y, n, batch_size, order, drop_last)


def _batch_iter(X, y, n, batch_size, order, drop_last):
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if drop_last and stop - start < batch_size:
            return
        if order is None:
            yield X[start:stop], y[start:stop]
        else:
            idx = order[start:stop]
            yield np.take(X, idx, axis=0), np.take(y, idx, axis=0)


def synthetic_mnist(n_train=60000, n_test=10000, seed=0):
    """MNIST-shaped, learnable fake data: ``(X_train, y_train), (X_test, y_test)``.

    Each class has a fixed blurry blob prototype; a sample is its class prototype
    shifted by up to 3 pixels, with random brightness and Gaussian pixel noise,
    clipped to [0, 1]. X is float32 (N, 784), y int64 in 0..9. Deterministic for a
    given ``seed``. Roughly as hard as MNIST for simple models (a linear classifier
    gets about 90-95 %), so training curves are meaningful.
    """
    n_train = _check_count("n_train", n_train, positive=False)
    n_test = _check_count("n_test", n_test, positive=False)
    rng = V.seeded_rng("seed", seed)
    # Random 7x7 on/off patterns, upscaled 4x and box-blurred: smooth, stroke-like
    # images. The empty 4-pixel border lets np.roll shift them without wrap-around.
    coarse = (rng.random((10, 7, 7)) < 0.35).astype(np.float32)
    coarse[:, [0, -1], :] = 0
    coarse[:, :, [0, -1]] = 0
    fine = np.kron(coarse, np.ones((1, 4, 4), dtype=np.float32))
    padded = np.pad(fine, ((0, 0), (1, 1), (1, 1)))
    protos = sum(padded[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9
    # All 49 shifted copies of each prototype, precomputed: shape (49, 10, 784).
    shifted = np.stack([
        np.roll(protos, (dy, dx), axis=(1, 2)).reshape(10, 784)
        for dy in range(-3, 4) for dx in range(-3, 4)
    ]).astype(np.float32)

    def make(n):
        y = rng.integers(0, 10, size=n, dtype=np.int64)
        X = np.empty((n, 784), dtype=np.float32)
        chunk = 8192  # bounds the temporary arrays
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            shift = rng.integers(0, len(shifted), size=e - s)
            scale = rng.uniform(0.6, 1.0, size=(e - s, 1)).astype(np.float32)
            noise = rng.standard_normal((e - s, 784), dtype=np.float32)
            noise *= np.float32(0.25)
            np.multiply(shifted[shift, y[s:e]], scale, out=X[s:e])
            X[s:e] += noise
        np.clip(X, 0.0, 1.0, out=X)
        return X, y

    return make(n_train), make(n_test)
