"""fetch_dataset and load_dataset on a read-only cache (a container image, a shared NFS export).

The cache holds real IDX files (tests/datacache.py) and is made unwritable for root too (a
read-only bind mount; see datacache.read_only for why and for the fallbacks).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from datacache import read_only, small_mnist

from fsnn.platform.data import DataError, fetch_dataset, load_dataset, read_idx
from fsnn.platform.data import sources as data_sources
from fsnn.platform.data.cache import HASH_STATS, STAMP_NAME
from fsnn.platform.data.catalog import IDX_DATASETS


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """<tmp>/cache/mnist: four small real IDX files, stamped by a first (writable) fetch."""
    spec = small_mnist(tmp_path / "cache" / "mnist")
    monkeypatch.setitem(IDX_DATASETS, "mnist", spec)
    monkeypatch.setattr(data_sources, "SYSTEM_DATASETS_DIR", tmp_path / "no-system-datasets")
    monkeypatch.setenv("FSNN_DATA_MIRROR", "http://127.0.0.1:9")  # never reached
    fetch_dataset("mnist", tmp_path / "cache", progress=False)
    assert (tmp_path / "cache" / "mnist" / STAMP_NAME).is_file()
    return tmp_path / "cache"


def _copied_without_mtimes(cache: Path, tmp_path: Path) -> Path:
    """What `cp -r` into an image does: same bytes, new mtimes, so the stamp no longer vouches."""
    copy = tmp_path / "image-cache"
    shutil.copytree(cache, copy, copy_function=shutil.copy)
    return copy


def _unstamped(cache: Path, tmp_path: Path) -> Path:
    (cache / "mnist" / STAMP_NAME).unlink()
    return cache


@pytest.mark.parametrize("make_stale", [_copied_without_mtimes, _unstamped])
def test_valid_files_in_a_read_only_cache_are_hashed_and_used(
    cache: Path,
    tmp_path: Path,
    make_stale: Callable[[Path, Path], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_stale(cache, tmp_path)
    stamp_before = _read_or_none(root / "mnist" / STAMP_NAME)
    capsys.readouterr()
    with read_only(root) as how:
        hashed = HASH_STATS["files"]
        assert fetch_dataset("mnist", root, progress=True) == root / "mnist"
        assert HASH_STATS["files"] == hashed + 4, how  # verified by hash, not trusted
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fsnn: note:"), err
        assert "stamp could not be updated" in err and "next run hashes them again" in err
        assert f"fsnn data verify mnist --dir {root}" in err
        assert "Traceback" not in err

        images, labels = load_dataset("mnist", "train", root, progress=False)
        assert capsys.readouterr().err == ""  # progress off: silent
        raw = read_idx(root / "mnist" / "train-images-idx3-ubyte")
        assert images.shape == (6, 1, 28, 28)
        want = (raw.astype(np.float64) / 255 - 0.1307) / 0.3081
        np.testing.assert_allclose(images[:, 0].numpy(), want, rtol=0, atol=1e-5)
        assert labels.tolist() == read_idx(root / "mnist" / "train-labels-idx1-ubyte").tolist()
    assert _read_or_none(root / "mnist" / STAMP_NAME) == stamp_before


def _read_or_none(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def test_stamped_read_only_cache_hashes_nothing_and_says_nothing(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    with read_only(cache):
        hashed = dict(HASH_STATS)
        assert fetch_dataset("mnist", cache, progress=True) == cache / "mnist"
        assert hashed == HASH_STATS
    assert capsys.readouterr().err == ""


def test_corrupt_file_in_a_read_only_cache_names_folder_file_and_fix(cache: Path) -> None:
    victim = cache / "mnist" / "t10k-images-idx3-ubyte"
    data = bytearray(victim.read_bytes())
    data[500] ^= 0xFF
    victim.write_bytes(bytes(data))
    sources_before = dict(data_sources.SOURCE_STATS)
    with read_only(cache), pytest.raises(DataError) as err:
        fetch_dataset("mnist", cache, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(cache / "mnist") in message and "t10k-images-idx3-ubyte is corrupt" in message
    assert "not writable" in message and "--dir DIR" in message and "$FSNN_DATA" in message
    assert victim.read_bytes() == bytes(data)  # left as it was, nothing deleted
    assert sources_before == data_sources.SOURCE_STATS


def test_missing_file_in_a_read_only_cache_fails_before_any_source(cache: Path) -> None:
    (cache / "mnist" / "train-labels-idx1-ubyte").unlink()
    sources_before = dict(data_sources.SOURCE_STATS)
    with read_only(cache), pytest.raises(DataError) as err:
        fetch_dataset("mnist", cache, progress=False)
    message = str(err.value)
    assert "\n" not in message and str(cache / "mnist") in message
    assert "lacks train-labels-idx1-ubyte" in message and "--dir DIR" in message
    assert sources_before == data_sources.SOURCE_STATS


def test_absent_data_set_in_a_read_only_cache_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "empty-cache"
    root.mkdir()
    spec = small_mnist(tmp_path / "elsewhere")
    monkeypatch.setitem(IDX_DATASETS, "mnist", spec)  # the catalog names files the cache lacks
    with read_only(root), pytest.raises(DataError, match="is not writable") as err:
        fetch_dataset("mnist", root, progress=False)
    assert str(root / "mnist") in str(err.value)
    assert list(root.iterdir()) == []
