"""N-MNIST: tiny event files in the original binary format, binned and checked against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fsnn.platform.data import (
    DataError,
    NMNISTFrames,
    events_to_frames,
    fetch_dataset,
    load_dataset,
    make_dataset_loader,
    read_events,
)

T = 5


def _random_events(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    t = np.sort(rng.integers(0, 300_000, n))  # µs, < 2**23, increasing as in a recording
    return {
        "x": rng.integers(0, 34, n),
        "y": rng.integers(0, 34, n),
        "p": rng.integers(0, 2, n),
        "t": t,
    }


def _encode(ev: dict[str, np.ndarray]) -> bytes:
    """5 bytes per event: x, y, then polarity (1 bit) + timestamp (23 bits), big-endian."""
    out = bytearray()
    for x, y, p, t in zip(ev["x"], ev["y"], ev["p"], ev["t"], strict=True):
        word = (int(p) << 23) | int(t)
        out += bytes([int(x), int(y), (word >> 16) & 0xFF, (word >> 8) & 0xFF, word & 0xFF])
    return bytes(out)


def _dense(ev: dict[str, np.ndarray], bins: int) -> np.ndarray:
    """[bins, 2, 34, 34] binary spikes: `bins` windows of width (t_last - t_first) // bins."""
    t0 = ev["t"][0]
    width = (ev["t"][-1] - t0) // bins
    b = (ev["t"] - t0) // width
    keep = b < bins
    frames = np.zeros((bins, 2, 34, 34), dtype=np.float32)
    frames[b[keep], ev["p"][keep], ev["y"][keep], ev["x"][keep]] = 1.0
    return frames


@pytest.fixture
def nmnist_root(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[int, dict[str, np.ndarray]]]]]:
    """<cache>/nmnist/{Train,Test}/<digit>/<id>.bin, the layout of the extracted archives."""
    rng = np.random.default_rng(7)
    written: dict[str, list[tuple[int, dict[str, np.ndarray]]]] = {"train": [], "test": []}
    for split, folder, per_digit in (("train", "Train", 2), ("test", "Test", 1)):
        for digit in (0, 3, 9):
            for k in range(per_digit):
                ev = _random_events(rng, int(rng.integers(50, 400)))
                path = tmp_path / "nmnist" / folder / str(digit) / f"{k:05d}.bin"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_encode(ev))
                written[split].append((digit, ev))
    return tmp_path, written


def test_read_events_round_trips(tmp_path: Path) -> None:
    ev = _random_events(np.random.default_rng(1), 100)
    path = tmp_path / "one.bin"
    path.write_bytes(_encode(ev))
    got = read_events(path)
    for field in ("x", "y", "p", "t"):
        assert got[field].tolist() == ev[field].tolist()


def test_events_to_frames_matches_numpy_binning() -> None:
    rng = np.random.default_rng(2)
    for _ in range(5):
        ev = _random_events(rng, 1000)
        structured = np.zeros(1000, dtype=[("x", int), ("y", int), ("t", int), ("p", int)])
        for field in ("x", "y", "t", "p"):
            structured[field] = ev[field]
        frames = events_to_frames(structured, T)
        assert frames.shape == (T, 2, 34, 34) and frames.dtype == torch.float32
        assert set(frames.unique().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(frames.numpy(), _dense(ev, T))


def test_load_dataset_nmnist(nmnist_root: tuple[Path, dict]) -> None:
    root, written = nmnist_root
    for split in ("train", "test"):
        spikes, labels = load_dataset("nmnist", split, root, time_bins=T, progress=False)  # type: ignore[arg-type]
        expected = written[split]  # written in sorted (digit, file) order, as the loader reads
        assert spikes.shape == (len(expected), T, 2, 34, 34)
        assert labels.tolist() == [digit for digit, _ in expected]
        for i, (_, ev) in enumerate(expected):
            np.testing.assert_array_equal(spikes[i].numpy(), _dense(ev, T))


def test_limit_spreads_over_digits(nmnist_root: tuple[Path, dict]) -> None:
    root, _ = nmnist_root
    frames = NMNISTFrames(fetch_dataset("nmnist", root), "train", time_bins=T, limit=3)
    assert frames.targets.tolist() == [0, 3, 9]


def test_tonic_save_to_layout_is_found(tmp_path: Path) -> None:
    path = tmp_path / "nmnist" / "NMNIST"
    for folder in ("Train", "Test"):
        (path / folder / "4").mkdir(parents=True)
        (path / folder / "4" / "00001.bin").write_bytes(
            _encode(_random_events(np.random.default_rng(), 20))
        )
    assert fetch_dataset("n-mnist", tmp_path) == path


def test_loader_shards_and_batches(nmnist_root: tuple[Path, dict]) -> None:
    root, written = nmnist_root
    dataset = NMNISTFrames(fetch_dataset("nmnist", root), "train", time_bins=T)
    seen = []
    for rank in range(2):
        loader = make_dataset_loader(dataset, 2, shuffle=True, seed=0, rank=rank, world_size=2)
        for spikes, labels in loader:
            assert spikes.shape[1:] == (T, 2, 34, 34)
            seen += labels.tolist()
    assert sorted(seen) == sorted(d for d, _ in written["train"])


def test_missing_nmnist_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        fetch_dataset("nmnist", tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nmnist" / "Train") in message


def test_truncated_event_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(12))
    with pytest.raises(DataError, match="5-byte"):
        read_events(path)
