"""Tests for fastnn.data: IDX I/O, dataset discovery, verified download, batching.

Everything runs offline; the download tests use an HTTP server on 127.0.0.1.
"""

import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from fastnn import data
from fastnn.data import (
    MNIST_FILES,
    DownloadError,
    IDXFormatError,
    batches,
    download_mnist,
    find_mnist,
    load_mnist,
    mnist_search_paths,
    read_idx,
    synthetic_mnist,
    write_idx,
)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 100, 20


# ---------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------


def make_dataset(directory, n_train=N_TRAIN, n_test=N_TEST, compress=True, seed=0):
    """Write a small valid MNIST-layout dataset; return the arrays written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        MNIST_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        MNIST_FILES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        MNIST_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        MNIST_FILES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    # Make sure both extremes occur so the [0, 1] scaling is exercised.
    arrays[MNIST_FILES[0]][0, 0, 0] = 255
    arrays[MNIST_FILES[0]][0, 0, 1] = 0
    for stem, arr in arrays.items():
        write_idx(directory / (stem + (".gz" if compress else "")), arr)
    return arrays


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """Isolate discovery from the real machine: no FASTNN_DATA_DIR, empty cache, no Debian dir."""
    monkeypatch.delenv("FASTNN_DATA_DIR", raising=False)
    monkeypatch.delenv("FASTNN_MNIST_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "_DEBIAN_FASHION_DIR", tmp_path / "debian-fashion")
    return tmp_path


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest output quiet
        pass


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serve tmp_path/'served' on 127.0.0.1; yields (base_url, served_dir, request_log)."""
    # A proxy configured in the environment must not intercept loopback requests.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    served = tmp_path / "served"
    served.mkdir()

    def handler(*args, **kwargs):
        return _CountingHandler(*args, directory=str(served), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served, server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def served_checksums(served):
    return {stem + ".gz": sha256_of(served / (stem + ".gz")) for stem in MNIST_FILES}


# ---------------------------------------------------------------------------
# IDX read/write
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / ("a.idx" + suffix), arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_idx_header_is_big_endian(tmp_path):
    path = write_idx(tmp_path / "x.idx", np.array([1, 256], dtype=np.int32))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 1])
    assert raw[4:8] == (2).to_bytes(4, "big")
    assert raw[8:] == (1).to_bytes(4, "big") + (256).to_bytes(4, "big")


def test_compression_detected_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_raw = write_idx(tmp_path / "raw.gz", arr, compress=False)
    raw_named_gz = write_idx(tmp_path / "compressed.idx", arr, compress=True)
    np.testing.assert_array_equal(read_idx(gz_named_raw), arr)
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))


def test_truncated_file(tmp_path):
    path = write_idx(tmp_path / "x.idx", np.zeros((10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IDXFormatError, match=r"expected 7840 bytes of data.*found 7740") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)
    assert "truncated" in str(exc.value)


def test_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "x.idx.gz", np.arange(5000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(IDXFormatError, match="gzip") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


def test_truncated_header(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big"))
    with pytest.raises(IDXFormatError, match="truncated IDX header"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "x.idx", np.zeros(10, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(IDXFormatError, match=r"expected 10 bytes of data.*found 14.*trailing"):
        read_idx(path)


def test_trailing_bytes_inside_gzip(tmp_path):
    path = tmp_path / "x.idx.gz"
    raw = write_idx(tmp_path / "x.idx", np.zeros(10, dtype=np.uint8)).read_bytes()
    path.write_bytes(gzip.compress(raw + b"\0\0"))
    with pytest.raises(IDXFormatError, match="found 12"):
        read_idx(path)


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(100),  # PNG signature
        b"hello, this is a text file\n",
        bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]),  # unknown type code
        bytes([0, 1, 0x08, 1, 0, 0, 0, 1, 0]),  # second byte not zero
        bytes([0, 0, 0x08, 0]),  # zero dimensions
    ],
    ids=["png", "text", "bad-type", "bad-zero", "ndim0"],
)
def test_foreign_or_wrong_magic(tmp_path, content):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(IDXFormatError, match="not an IDX file: magic bytes") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_too_short_and_empty(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(IDXFormatError, match="too short"):
        read_idx(path)


# ---------------------------------------------------------------------------
# load_mnist and discovery
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_from_dir(tmp_path, clean_env, compress):
    arrays = make_dataset(tmp_path / "d", compress=compress)
    (X, y), (Xt, yt) = load_mnist(tmp_path / "d")
    assert X.shape == (N_TRAIN, 784) and Xt.shape == (N_TEST, 784)
    assert y.shape == (N_TRAIN,) and yt.shape == (N_TEST,)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.flags.c_contiguous and Xt.flags.c_contiguous
    assert X.min() == 0.0 and X.max() == 1.0
    assert 0 <= yt.min() and yt.max() <= 9
    np.testing.assert_allclose(X * 255, arrays[MNIST_FILES[0]].reshape(N_TRAIN, 784), atol=1e-4)
    np.testing.assert_array_equal(yt, arrays[MNIST_FILES[3]])


def test_load_mnist_unflattened(tmp_path, clean_env):
    make_dataset(tmp_path / "d")
    (X, _), (Xt, _) = load_mnist(str(tmp_path / "d"), flatten=False)
    assert X.shape == (N_TRAIN, 28, 28) and Xt.shape == (N_TEST, 28, 28)
    assert X.dtype == np.float32 and X.flags.c_contiguous


def test_load_mnist_label_count_mismatch(tmp_path, clean_env):
    make_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / (MNIST_FILES[1] + ".gz"), np.zeros(N_TRAIN - 1, dtype=np.uint8))
    with pytest.raises(ValueError, match=f"{N_TRAIN - 1} labels but .* has {N_TRAIN} images"):
        load_mnist(tmp_path / "d")


def test_load_mnist_label_out_of_range(tmp_path, clean_env):
    make_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / (MNIST_FILES[3] + ".gz"), np.full(N_TEST, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"0\.\.9, found 10"):
        load_mnist(tmp_path / "d")


def test_load_mnist_wrong_image_shape(tmp_path, clean_env):
    make_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / (MNIST_FILES[2] + ".gz"), np.zeros((N_TEST, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        load_mnist(tmp_path / "d")


def test_explicit_data_dir_missing_files(tmp_path, clean_env):
    d = tmp_path / "partial"
    make_dataset(d)
    (d / (MNIST_FILES[2] + ".gz")).unlink()
    # Valid data elsewhere must not be used as a fallback when data_dir is explicit.
    make_dataset(tmp_path / "xdg" / "fastnn" / "mnist")
    with pytest.raises(FileNotFoundError) as exc:
        load_mnist(d)
    msg = str(exc.value)
    assert str(d) in msg and MNIST_FILES[2] in msg
    assert MNIST_FILES[0] not in msg
    assert "download=True" in msg


def test_env_var_dir_and_subdir(tmp_path, clean_env, monkeypatch):
    root = tmp_path / "datasets"
    make_dataset(root / "fashion-mnist", n_train=7, n_test=3)
    monkeypatch.setenv("FASTNN_DATA_DIR", str(root))
    assert find_mnist("fashion") == root / "fashion-mnist"
    assert find_mnist("mnist") is None
    (X, _), (Xt, _) = load_mnist(kind="fashion")
    assert X.shape == (7, 784) and Xt.shape == (3, 784)

    make_dataset(root, n_train=5, n_test=2)  # the root itself takes precedence
    assert find_mnist("fashion") == root
    assert load_mnist(kind="mnist")[0][0].shape == (5, 784)


def test_xdg_cache_search(tmp_path, clean_env):
    make_dataset(tmp_path / "xdg" / "fastnn" / "mnist", n_train=4, n_test=2)
    assert find_mnist("mnist") == tmp_path / "xdg" / "fastnn" / "mnist"
    assert load_mnist()[1][0].shape == (2, 784)


def test_home_cache_when_xdg_unset(tmp_path, clean_env, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    cache = tmp_path / "home" / ".cache" / "fastnn" / "fashion"
    make_dataset(cache, n_train=4, n_test=2)
    assert find_mnist("fashion") == cache


def test_search_order(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path / "env"))
    assert mnist_search_paths("fashion") == [
        tmp_path / "env",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "xdg" / "fastnn" / "fashion",
        tmp_path / "debian-fashion",
    ]
    assert mnist_search_paths("mnist") == [
        tmp_path / "env",
        tmp_path / "env" / "mnist",
        tmp_path / "xdg" / "fastnn" / "mnist",
    ]
    assert mnist_search_paths("mnist", data_dir=tmp_path / "x") == [tmp_path / "x"]


def test_no_home_no_xdg(clean_env, monkeypatch):
    monkeypatch.delenv("HOME")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert mnist_search_paths("mnist") == []
    with pytest.raises(FileNotFoundError, match="HOME and XDG_CACHE_HOME are unset"):
        load_mnist()
    with pytest.raises(ValueError, match="dest_dir"):
        download_mnist()


@pytest.mark.parametrize("kind", ["mnist", "fashion"])
def test_not_found_message_lists_searched_places(tmp_path, clean_env, monkeypatch, kind):
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    with pytest.raises(FileNotFoundError) as exc:
        load_mnist(kind=kind)
    msg = str(exc.value)
    for path in mnist_search_paths(kind):
        assert str(path) in msg
    assert "FASTNN_DATA_DIR" in msg and "data_dir" in msg and "download=True" in msg
    assert "missing train-images-idx3-ubyte" in msg  # the env dir exists but is empty
    assert ("apt-get install dataset-fashion-mnist" in msg) == (kind == "fashion")


def test_fashion_debian_dir_is_searched(tmp_path, clean_env):
    make_dataset(tmp_path / "debian-fashion", n_train=3, n_test=2)
    assert find_mnist("fashion") == tmp_path / "debian-fashion"
    assert find_mnist("mnist") is None


@pytest.mark.parametrize("bad", ["emnist", "MNIST", None, 3])
def test_bad_kind(bad):
    for call in (lambda: load_mnist(kind=bad), lambda: mnist_search_paths(bad),
                 lambda: find_mnist(bad), lambda: download_mnist("/nonexistent", kind=bad)):
        with pytest.raises(ValueError, match="kind"):
            call()


@pytest.mark.skipif(not (DEBIAN_FASHION / (MNIST_FILES[0] + ".gz")).is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_debian_fashion_mnist():
    (X, y), (Xt, yt) = load_mnist(DEBIAN_FASHION, kind="fashion")
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784)
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= X.min() and X.max() <= 1.0
    assert set(np.unique(y)) == set(range(10)) and set(np.unique(yt)) == set(range(10))
    # Fashion-MNIST is exactly balanced: 6000 / 1000 per class.
    assert (np.bincount(y) == 6000).all() and (np.bincount(yt) == 1000).all()


# ---------------------------------------------------------------------------
# download_mnist against a local server
# ---------------------------------------------------------------------------


def test_download_success_and_load(tmp_path, clean_env, http_server):
    base_url, served, requests = http_server
    arrays = make_dataset(served)
    sums = served_checksums(served)
    dest = tmp_path / "dl"
    (X, y), (Xt, yt) = load_mnist(dest, download=True, base_url=base_url, checksums=sums)
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)  # no temp files left
    for name, digest in sums.items():
        assert sha256_of(dest / name) == digest
    assert X.shape == (N_TRAIN, 784) and Xt.shape == (N_TEST, 784)
    np.testing.assert_array_equal(y, arrays[MNIST_FILES[1]])
    assert len(requests) == 4


def test_download_skips_present_files(tmp_path, clean_env, http_server):
    base_url, served, requests = http_server
    make_dataset(served)
    sums = served_checksums(served)
    dest = tmp_path / "dl"
    assert download_mnist(dest, base_url=base_url, checksums=sums) == dest
    assert len(requests) == 4
    download_mnist(dest, base_url=base_url, checksums=sums)
    assert len(requests) == 4  # everything already verified on disk

    # A damaged local copy is fetched again, and only that one.
    (dest / (MNIST_FILES[3] + ".gz")).write_bytes(b"damaged")
    download_mnist(dest, base_url=base_url, checksums=sums)
    assert requests[4:] == [f"/{MNIST_FILES[3]}.gz"]
    assert sha256_of(dest / (MNIST_FILES[3] + ".gz")) == sums[MNIST_FILES[3] + ".gz"]


def test_download_checksum_mismatch_leaves_nothing(tmp_path, clean_env, http_server):
    base_url, served, _ = http_server
    make_dataset(served)
    sums = served_checksums(served)
    bad_name = MNIST_FILES[1] + ".gz"
    good_digest = sums[bad_name]
    (served / bad_name).write_bytes(b"corrupted" * 10)
    actual = hashlib.sha256(b"corrupted" * 10).hexdigest()
    dest = tmp_path / "dl"
    with pytest.raises(ValueError) as exc:
        download_mnist(dest, base_url=base_url, checksums=sums)
    msg = str(exc.value)
    assert bad_name in msg and good_digest in msg and actual in msg
    assert not (dest / bad_name).exists()
    # Only the file before the bad one made it; no .part files are left behind.
    assert [p.name for p in dest.iterdir()] == [MNIST_FILES[0] + ".gz"]


def test_download_http_404(tmp_path, clean_env, http_server):
    base_url, served, _ = http_server
    make_dataset(served)
    sums = served_checksums(served)
    (served / (MNIST_FILES[2] + ".gz")).unlink()
    with pytest.raises(DownloadError, match="HTTP 404") as exc:
        download_mnist(tmp_path / "dl", base_url=base_url, checksums=sums)
    assert f"{base_url}{MNIST_FILES[2]}.gz" in str(exc.value)
    assert not any(p.name.endswith(".part") for p in (tmp_path / "dl").iterdir())


def test_download_uses_env_url(tmp_path, clean_env, http_server, monkeypatch):
    base_url, served, requests = http_server
    make_dataset(served)
    monkeypatch.setenv("FASTNN_MNIST_URL", base_url.rstrip("/"))  # trailing slash optional
    download_mnist(tmp_path / "dl", checksums=served_checksums(served))
    assert len(requests) == 4


def test_download_default_dest_is_cache(tmp_path, clean_env, http_server):
    base_url, served, _ = http_server
    make_dataset(served)
    sums = served_checksums(served)
    (X, _), _ = load_mnist(kind="fashion", download=True, base_url=base_url, checksums=sums)
    cache = tmp_path / "xdg" / "fastnn" / "fashion"
    assert find_mnist("fashion") == cache
    assert X.shape == (N_TRAIN, 784)


def test_download_connection_refused(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    # Grab a free port and close it again so nothing is listening there.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    dest = tmp_path / "dl"
    with pytest.raises(DownloadError) as exc:
        download_mnist(dest, base_url=url, checksums={s + ".gz": "0" * 64 for s in MNIST_FILES},
                       timeout=5)
    assert isinstance(exc.value, ConnectionError) and isinstance(exc.value, OSError)
    msg = str(exc.value)
    assert f"could not download {url}{MNIST_FILES[0]}.gz" in msg
    assert "refused" in msg.lower()
    assert "offline" in msg and str(dest) in msg and "data_dir" in msg
    assert list(dest.iterdir()) == []


def test_checksum_table_requires_every_file(tmp_path):
    with pytest.raises(ValueError, match="t10k-labels"):
        download_mnist(tmp_path, base_url="http://127.0.0.1:9/",
                       checksums={s + ".gz": "0" * 64 for s in MNIST_FILES[:3]})


def test_builtin_checksum_table():
    for kind in ("mnist", "fashion"):
        table = data.CHECKSUMS[kind]
        assert sorted(table) == sorted(s + ".gz" for s in MNIST_FILES)
        assert all(len(v) == 64 and int(v, 16) >= 0 for v in table.values())


# ---------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------


def test_batches_unshuffled_views():
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    out = list(batches(X, y, 4, shuffle=False))
    assert [len(b[1]) for b in out] == [4, 4, 2]
    assert np.shares_memory(out[0][0], X)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]), y)
    assert [len(b[1]) for b in batches(X, y, 4, shuffle=False, drop_last=True)] == [4, 4]


def test_batches_shuffled_is_permutation_and_reproducible():
    X = np.arange(30, dtype=np.float32).reshape(15, 2)
    y = np.arange(15)
    out = list(batches(X, y, 4, rng=0))
    ys = np.concatenate([b[1] for b in out])
    assert sorted(ys) == list(range(15)) and not np.array_equal(ys, y)
    for Xb, yb in out:
        np.testing.assert_array_equal(Xb[:, 0], 2 * yb)  # rows stay paired with labels
        assert not np.shares_memory(Xb, X)
    again = np.concatenate([b[1] for b in batches(X, y, 4, rng=np.random.default_rng(0))])
    np.testing.assert_array_equal(ys, again)


def test_batches_validation():
    X, y = np.zeros((5, 2)), np.zeros(5)
    with pytest.raises(ValueError, match="batch_size"):
        batches(X, y, 0)
    with pytest.raises(ValueError, match="batch_size"):
        batches(X, y, -3)
    for bad in (2.0, "2", True, None):
        with pytest.raises(TypeError, match="batch_size"):
            batches(X, y, bad)
    with pytest.raises(ValueError, match="same length"):
        batches(X, np.zeros(4), 2)
    assert len(list(batches(X, y, np.int64(2)))) == 3
    assert list(batches(X[:0], y[:0], 3)) == []


# ---------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------


def test_synthetic_mnist_shapes_and_determinism():
    (X, y), (Xt, yt) = synthetic_mnist(500, 100, seed=3)
    assert X.shape == (500, 784) and Xt.shape == (100, 784)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.flags.c_contiguous
    assert X.min() >= 0.0 and X.max() <= 1.0
    assert y.min() >= 0 and y.max() <= 9
    (X2, y2), _ = synthetic_mnist(500, 100, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(synthetic_mnist(500, 0, seed=4)[0][0], X)


def test_synthetic_mnist_is_learnable():
    (X, y), (Xt, yt) = synthetic_mnist(2000, 500, seed=0)
    # Nearest class mean, fitted on train, should do far better than chance on test.
    means = np.stack([X[y == c].mean(axis=0) for c in range(10)])
    pred = np.argmin(((Xt[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == yt).mean() > 0.6


def test_synthetic_mnist_validation():
    with pytest.raises(ValueError, match="n_train"):
        synthetic_mnist(-1)
    with pytest.raises(TypeError, match="n_test"):
        synthetic_mnist(10, 2.5)
