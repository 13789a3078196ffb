"""N-MNIST: read event files with tonic's reader and bin them into dense spike frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError

SENSOR_SIZE = (34, 34, 2)  # (x, y, polarity), tonic's convention
DEFAULT_TIME_BINS = 30
_SPLIT_FOLDERS = {"train": "Train", "test": "Test"}
_EVENT_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])


def _tonic() -> tuple[Any, Any]:
    try:
        from tonic.io import read_mnist_file
        from tonic.transforms import ToFrame
    except ImportError:
        raise DataError("N-MNIST needs tonic; install it with `pip install fsnn[events]`") from None
    return read_mnist_file, ToFrame


def locate_nmnist(cache: Path) -> Path:
    """The folder holding Train/ and Test/ (each <digit>/*.bin), under <cache>/nmnist."""
    base = cache / "nmnist"
    for folder in (base, base / "NMNIST"):  # the extracted archives, or tonic's save_to layout
        if all(any((folder / s).glob("[0-9]/*.bin")) for s in _SPLIT_FOLDERS.values()):
            return folder
    raise DataError(
        f"N-MNIST not found in {base} and fsnn cannot download it; download Train.zip and "
        f"Test.zip from the N-MNIST site (or run tonic.datasets.NMNIST(save_to='{base}') on a "
        f"networked machine) and extract them so that {base}/Train/<digit>/*.bin exists"
    )


def read_events(path: Path | str) -> np.ndarray:
    """One N-MNIST .bin file as a structured array with fields x, y, t (µs), p."""
    read_mnist_file, _ = _tonic()
    size = Path(path).stat().st_size
    if size % 5:
        raise DataError(f"{path} is {size} bytes, not a whole number of 5-byte N-MNIST events")
    return read_mnist_file(str(path), dtype=_EVENT_DTYPE)


def events_to_frames(events: np.ndarray, time_bins: int = DEFAULT_TIME_BINS) -> torch.Tensor:
    """Dense binary spikes [T, 2, 34, 34] (T, polarity, y, x) via tonic's ToFrame(n_time_bins=T).

    ToFrame splits [t_first, t_last] into T equal windows of integer width (events past the
    last full window are dropped) and counts events per pixel; counts are clipped to {0, 1}.
    """
    _, to_frame = _tonic()
    frames = to_frame(sensor_size=SENSOR_SIZE, n_time_bins=time_bins)(events)
    return torch.from_numpy(np.minimum(np.asarray(frames), 1).astype(np.float32))


def list_samples(folder: Path, split: str) -> list[tuple[Path, int]]:
    """(file, label) for every <split folder>/<digit>/*.bin, sorted like tonic does."""
    if split not in _SPLIT_FOLDERS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    root = folder / _SPLIT_FOLDERS[split]
    samples = [(p, int(p.parent.name)) for p in sorted(root.glob("[0-9]/*.bin"))]
    if not samples:
        raise DataError(f"no N-MNIST .bin files under {root}/<digit>/; extract the archive there")
    return samples


class NMNISTFrames(Dataset[tuple[torch.Tensor, int]]):
    """Map-style N-MNIST: item i is (spikes float [T,2,34,34], label); files are read lazily.

    `limit` keeps that many samples spread evenly over the sorted file list (every digit shows up).
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        *,
        time_bins: int = DEFAULT_TIME_BINS,
        limit: int | None = None,
    ) -> None:
        samples = list_samples(folder, split)
        if limit is not None and limit < len(samples):  # evenly spaced, so every digit appears
            samples = [samples[i * len(samples) // limit] for i in range(limit)]
        self.samples = samples
        self.time_bins = time_bins
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return events_to_frames(read_events(path), self.time_bins), label
