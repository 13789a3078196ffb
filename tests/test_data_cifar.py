"""CIFAR-10/100 binary-version readers and fetch, on small files written in the official format."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fsnn.platform.data import DataError, fetch_dataset, load_dataset
from fsnn.platform.data.catalog import CIFAR10, CIFAR100, CifarArchive
from fsnn.platform.data.cifar import fetch_cifar

MEAN = np.array([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1)
STD = np.array([0.2023, 0.1994, 0.2010]).reshape(1, 3, 1, 1)


def _write_records(path: Path, rng: np.random.Generator, n: int, label_bytes: int) -> bytes:
    """n random records: label byte(s) then 1024 R, 1024 G, 1024 B bytes (row-major 32x32)."""
    classes = 10 if label_bytes == 1 else 100
    rows = []
    for _ in range(n):
        labels = [int(rng.integers(0, 20))] if label_bytes == 2 else []  # coarse label
        labels.append(int(rng.integers(0, classes)))
        rows.append(bytes(labels) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes())
    data = b"".join(rows)
    path.write_bytes(data)
    return data


def _expected(blobs: list[bytes], label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent decoding, one record at a time."""
    images, labels = [], []
    rec = label_bytes + 3072
    for blob in blobs:
        for start in range(0, len(blob), rec):
            record = blob[start : start + rec]
            labels.append(record[label_bytes - 1])
            pixels = np.frombuffer(record[label_bytes:], dtype=np.uint8).reshape(3, 32, 32)
            images.append(pixels)
    x = (np.stack(images).astype(np.float64) / 255 - MEAN) / STD
    return x, np.array(labels)


def _make_folder(folder: Path, spec: CifarArchive, seed: int = 0) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    train = [_write_records(folder / f, rng, 3, spec.label_bytes) for f in spec.train_files]
    test = [_write_records(folder / f, rng, 4, spec.label_bytes) for f in spec.test_files]
    return {"train": train, "test": test}


@pytest.mark.parametrize("spec", [CIFAR10, CIFAR100], ids=lambda s: s.name)
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_cifar_matches_independent_decoding(
    tmp_path: Path, spec: CifarArchive, split: str
) -> None:
    blobs = _make_folder(tmp_path / spec.name / spec.folder, spec)[split]
    images, labels = load_dataset(spec.name, split, tmp_path, progress=False)  # type: ignore[arg-type]
    want_x, want_y = _expected(blobs, spec.label_bytes)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape == (len(want_y), 3, 32, 32)
    np.testing.assert_allclose(images.numpy(), want_x, rtol=0, atol=1e-5)
    assert labels.tolist() == want_y.tolist()


def test_folder_placed_directly_in_cache_is_found(tmp_path: Path) -> None:
    _make_folder(tmp_path / CIFAR10.folder, CIFAR10)
    assert fetch_dataset("cifar-10", tmp_path, progress=False) == tmp_path / CIFAR10.folder
    images, _ = load_dataset("cifar10", "train", tmp_path, limit=7, progress=False)
    assert images.shape == (7, 3, 32, 32)


def test_truncated_record_file_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / CIFAR10.folder
    _make_folder(folder, CIFAR10)
    batch = folder / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"data_batch_3\.bin is \d+ bytes, not a whole number"):
        fetch_dataset("cifar10", tmp_path, progress=False)


def test_out_of_range_label_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / CIFAR10.folder
    _make_folder(folder, CIFAR10)
    (folder / "test_batch.bin").write_bytes(bytes([42]) + bytes(3072))
    with pytest.raises(DataError, match="label 42"):
        load_dataset("cifar10", "test", tmp_path, progress=False)


def test_incomplete_folder_names_missing_files(tmp_path: Path) -> None:
    folder = tmp_path / "cifar100" / CIFAR100.folder
    _make_folder(folder, CIFAR100)
    (folder / "test.bin").unlink()
    with pytest.raises(DataError, match=r"incomplete \(missing test\.bin\)"):
        fetch_dataset("cifar100", tmp_path, progress=False)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
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


def test_unreachable_download_says_where_to_place_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSNN_DATA_MIRROR", _closed_port_url())
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        fetch_dataset("cifar10", cache, progress=False)
    message = str(err.value)
    assert "\n" not in message and "cannot download cifar10" in message
    assert f"cifar-10-batches-bin folder in {cache / 'cifar10'}" in message
    assert not cache.exists() or list(cache.rglob("*")) == []


def _tar_gz(spec: CifarArchive, tmp: Path) -> bytes:
    _make_folder(tmp / spec.folder, spec, seed=3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp / spec.folder, arcname=spec.folder)
    return buf.getvalue()


def test_download_with_wrong_md5_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_dir: tuple[Path, str]
) -> None:
    www, url = serve_dir
    (www / "cifar10").mkdir()
    (www / "cifar10" / CIFAR10.archive).write_bytes(_tar_gz(CIFAR10, tmp_path / "src"))
    monkeypatch.setenv("FSNN_DATA_MIRROR", url)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"checksum mismatch for cifar-10-binary\.tar\.gz.*removed"):
        fetch_dataset("cifar10", cache, progress=False)
    assert not cache.exists() or list(cache.rglob("*")) == []


def test_download_with_matching_md5_is_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_dir: tuple[Path, str]
) -> None:
    www, url = serve_dir
    archive = _tar_gz(CIFAR100, tmp_path / "src")
    spec = dataclasses.replace(CIFAR100, md5=hashlib.md5(archive).hexdigest())
    (www / "cifar100").mkdir()
    (www / "cifar100" / spec.archive).write_bytes(archive)
    monkeypatch.setenv("FSNN_DATA_MIRROR", url)
    folder = fetch_cifar(spec, tmp_path / "cache", progress=False)
    assert folder == tmp_path / "cache" / "cifar100" / spec.folder
    assert sorted(p.name for p in folder.iterdir()) == ["test.bin", "train.bin"]
    assert sorted(p.name for p in folder.parent.iterdir()) == [spec.folder]  # archive removed
    assert (folder / "train.bin").read_bytes() == (
        tmp_path / "src" / spec.folder / "train.bin"
    ).read_bytes()
