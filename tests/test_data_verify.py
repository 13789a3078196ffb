"""verify_dataset (re-hash against the catalog) and check_dataset (headers only) on real caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datacache import read_only, small_mnist

from fsnn.platform.data import DataError, check_dataset, fetch_dataset, verify_dataset
from fsnn.platform.data.cache import HASH_STATS, STAMP_NAME
from fsnn.platform.data.catalog import CIFAR10, CIFAR100, IDX_DATASETS, IDX_FILES, CifarArchive


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """<tmp>/cache/mnist: four small real IDX files that the (patched) catalog vouches for."""
    monkeypatch.setitem(IDX_DATASETS, "mnist", small_mnist(tmp_path / "cache" / "mnist"))
    return tmp_path / "cache"


def _stamped(cache: Path) -> set[str]:
    return set(json.loads((cache / "mnist" / STAMP_NAME).read_text())["files"])


def test_verify_hashes_every_file_and_rewrites_the_stamp(cache: Path) -> None:
    hashed = HASH_STATS["files"]
    report = verify_dataset("MNIST", cache)
    assert HASH_STATS["files"] == hashed + 4
    assert report.ok and report.dataset == "mnist" and report.folder == cache / "mnist"
    assert [(f.name, f.status) for f in report.files] == [(n, "ok") for n in IDX_FILES]
    assert report.stamp_error is None and report.stamp_note() is None
    assert _stamped(cache) == set(IDX_FILES)
    lines = report.lines()
    assert lines[:4] == [f"ok         {n}" for n in IDX_FILES]
    assert lines[4] == f"mnist in {cache / 'mnist'}: 4 ok"
    hashed = dict(HASH_STATS)
    fetch_dataset("mnist", cache, progress=False)  # the stamp it wrote is trusted
    assert hashed == HASH_STATS


def test_verify_reports_corrupt_and_missing_and_deletes_nothing(cache: Path) -> None:
    folder = cache / "mnist"
    flipped = bytearray((folder / "train-images-idx3-ubyte").read_bytes())
    flipped[40] ^= 0x01
    (folder / "train-images-idx3-ubyte").write_bytes(bytes(flipped))
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    report = verify_dataset("mnist", cache)
    assert not report.ok
    status = {f.name: (f.status, f.detail) for f in report.files}
    assert status["train-images-idx3-ubyte"][0] == "corrupt"
    assert status["train-images-idx3-ubyte"][1].startswith("sha256 ")
    assert status["train-labels-idx1-ubyte"] == ("corrupt", "4 bytes, expected 14")
    assert status["t10k-labels-idx1-ubyte"] == ("missing", "")
    assert status["t10k-images-idx3-ubyte"] == ("ok", "")
    assert (folder / "train-images-idx3-ubyte").read_bytes() == bytes(flipped)
    assert _stamped(cache) == {"t10k-images-idx3-ubyte"}  # only what was found ok
    summary = report.lines()[-1]
    assert summary.startswith(f"mnist in {folder}: 1 ok, 2 corrupt, 1 missing; re-fetch")
    assert f"fsnn data fetch mnist --dir {cache}" in summary
    assert report.lines()[0].startswith("corrupt    train-images-idx3-ubyte  (sha256 ")


def test_verify_on_a_read_only_cache_says_the_stamp_was_not_written(cache: Path) -> None:
    with read_only(cache):
        report = verify_dataset("mnist", cache)
    assert report.ok
    assert report.stamp_error in ("Read-only file system", "Operation not permitted",
                                  "Permission denied")  # fmt: skip
    note = report.stamp_note()
    assert note is not None and str(cache / "mnist") in note and "\n" not in note
    assert not (cache / "mnist" / STAMP_NAME).exists()


def test_verify_needs_per_file_hashes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no per-file checksums for cifar10"):
        verify_dataset("cifar-10", tmp_path)


def test_check_accepts_a_good_cache_and_reads_only_headers(cache: Path) -> None:
    hashed = dict(HASH_STATS)
    check_dataset("mnist", cache)
    assert hashed == HASH_STATS
    with read_only(cache):
        check_dataset("mnist", cache)


def _patch(path: Path, offset: int, data: bytes) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset : offset + len(data)] = data
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    ("file", "offset", "data", "message"),
    [
        (
            "train-images-idx3-ubyte",
            2,
            b"\x0d",
            "corrupt idx header in {path}: magic 0x00000d03, expected 0x00000803",
        ),
        (
            "t10k-labels-idx1-ubyte",
            0,
            b"\xff",
            "corrupt idx header in {path}: magic 0xff000801, expected 0x00000801",
        ),
        (
            "t10k-images-idx3-ubyte",
            8,
            b"\x00\x00\x00\x1c\x00\x00\x00\x1d",
            r"corrupt idx header in {path}: dimensions \(4, 28, 29\), expected \(4, 28, 28\)",
        ),
        (
            "train-labels-idx1-ubyte",
            4,
            b"\x00\x00\x00\x07",
            r"corrupt idx header in {path}: dimensions \(7,\), expected \(6,\)",
        ),
    ],
)
def test_check_names_the_corrupt_header(
    cache: Path, file: str, offset: int, data: bytes, message: str
) -> None:
    path = cache / "mnist" / file
    _patch(path, offset, data)
    with pytest.raises(DataError, match=message.format(path=path)) as err:
        check_dataset("mnist", cache)
    assert str(err.value).endswith(f"; re-fetch with `fsnn data fetch mnist --dir {cache}`")
    assert "\n" not in str(err.value)


def test_check_names_a_wrong_size_and_a_missing_file(cache: Path) -> None:
    path = cache / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=f"{path} is 3151 bytes, the catalog says 3152"):
        check_dataset("mnist", cache)
    path.unlink()
    with pytest.raises(DataError, match=f"{path} is missing from the mnist cache; re-fetch"):
        check_dataset("mnist", cache)


def _cifar_folder(cache: Path, spec: CifarArchive, first_label: int = 3) -> Path:
    """Two records per .bin in the official layout: label byte(s), then 3072 pixel bytes."""
    folder = cache / spec.name / spec.folder
    folder.mkdir(parents=True)
    labels = bytes([7] * (spec.label_bytes - 1) + [first_label])
    for name in (*spec.train_files, *spec.test_files):
        (folder / name).write_bytes((labels + bytes(range(256)) * 12) * 2)
    return folder


@pytest.mark.parametrize("spec", [CIFAR10, CIFAR100])
def test_check_cifar_headers(tmp_path: Path, spec: CifarArchive) -> None:
    folder = _cifar_folder(tmp_path, spec)
    check_dataset(spec.name, tmp_path)
    bad = folder / spec.test_files[0]
    _patch(bad, spec.label_bytes - 1, bytes([spec.num_classes]))
    with pytest.raises(DataError, match=f"corrupt {spec.name} file {bad}: first record's label"):
        check_dataset(spec.name, tmp_path)
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(DataError, match="not a whole number of"):
        check_dataset(spec.name, tmp_path)


def test_check_cifar_not_cached(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar10 is not in the cache .*fsnn data fetch cifar10"):
        check_dataset("cifar10", tmp_path)


def test_check_nmnist_event_files(tmp_path: Path) -> None:
    for split in ("Train", "Test"):
        for digit in (0, 5):
            path = tmp_path / "nmnist" / split / str(digit) / "00001.bin"
            path.parent.mkdir(parents=True)
            path.write_bytes(bytes(5 * 20))
    check_dataset("n-mnist", tmp_path)
    bad = tmp_path / "nmnist" / "Test" / "5" / "00001.bin"
    bad.write_bytes(bytes(5 * 20 + 2))
    with pytest.raises(DataError, match=f"corrupt N-MNIST file {bad}: 102 bytes"):
        check_dataset("nmnist", tmp_path)
