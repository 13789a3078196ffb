"""The data layer: fetch data sets into a local cache and load them as normalized tensors."""

from __future__ import annotations

from .augment import RandomCropFlip
from .cache import cache_root
from .check import check_dataset
from .datasets import DATASETS, DatasetInfo, cifar_augmentation, load_dataset, normalize
from .errors import DataError
from .fetch import canonical_name, fetch_dataset
from .idx import parse_idx, read_idx
from .loader import ShardedLoader, make_dataset_loader, make_loader
from .nmnist import NMNISTFrames, events_to_frames, read_events
from .verify import FileVerdict, VerifyReport, verify_dataset

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "FileVerdict",
    "NMNISTFrames",
    "RandomCropFlip",
    "ShardedLoader",
    "VerifyReport",
    "cache_root",
    "canonical_name",
    "check_dataset",
    "cifar_augmentation",
    "events_to_frames",
    "fetch_dataset",
    "load_dataset",
    "make_dataset_loader",
    "make_loader",
    "normalize",
    "parse_idx",
    "read_events",
    "read_idx",
    "verify_dataset",
]
