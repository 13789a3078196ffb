"""The data set registry and `load_dataset`: normalized tensors ready for training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .augment import RandomCropFlip
from .catalog import CIFAR_DATASETS
from .cifar import read_cifar_split
from .errors import DataError
from .fetch import canonical_name, fetch_dataset
from .idx import read_idx
from .nmnist import DEFAULT_TIME_BINS, NMNISTFrames

Split = Literal["train", "test"]

_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_MNIST_NORM = ((0.1307,), (0.3081,))
_CIFAR_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a data set as `load_dataset` returns it."""

    name: str
    shape: tuple[int, ...]  # one sample, without the batch dimension
    num_classes: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per-channel normalization; empty for spike data
    std: tuple[float, ...]
    train_size: int
    test_size: int
    event_based: bool = False


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", (1, 28, 28), 10, tuple(str(d) for d in range(10)), *_MNIST_NORM, 60000, 10000
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", (1, 28, 28), 10, _FASHION_CLASSES, *_MNIST_NORM, 60000, 10000
    ),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, _CIFAR10_CLASSES, *_CIFAR_NORM, 50000, 10000
    ),
    "cifar100": DatasetInfo(
        "cifar100", (3, 32, 32), 100, _CIFAR100_CLASSES, *_CIFAR_NORM, 50000, 10000
    ),
    "nmnist": DatasetInfo(
        "nmnist",
        (DEFAULT_TIME_BINS, 2, 34, 34),
        10,
        tuple(str(d) for d in range(10)),
        (),
        (),
        60000,
        10000,
        event_based=True,
    ),
}


def normalize(images: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    """uint8 [N,C,H,W] -> float32 (x/255 - mean)/std per channel."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def _check_split(split: str) -> bool:
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    return split == "train"


def load_dataset(
    name: str,
    split: Split,
    root: Path | None = None,
    *,
    limit: int | None = None,
    progress: bool = True,
    time_bins: int = DEFAULT_TIME_BINS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, C, H, W] normalized, labels int64 [N]); fetches into the cache first.

    MNIST/Fashion-MNIST: (x/255 - 0.1307)/0.3081; CIFAR-10/100: per-channel mean/std of
    CIFAR-10. `limit` keeps the first N samples (N-MNIST: N spread evenly over the digits).
    N-MNIST yields binary spikes [N, time_bins, 2, 34, 34] (not normalized); it is dense, so
    for the full set prefer `NMNISTFrames` with `make_dataset_loader`.
    """
    key = canonical_name(name)
    train = _check_split(split)
    info = DATASETS[key]
    folder = fetch_dataset(key, root, progress=progress)
    if key == "nmnist":
        frames = NMNISTFrames(folder, split, time_bins=time_bins, limit=limit)
        if len(frames) == 0:
            return torch.zeros(0, time_bins, 2, 34, 34), torch.zeros(0, dtype=torch.long)
        return torch.stack([frames[i][0] for i in range(len(frames))]), frames.targets
    if key in CIFAR_DATASETS:
        images, labels = read_cifar_split(folder, CIFAR_DATASETS[key], train)
    else:
        prefix = "train" if train else "t10k"
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise DataError(f"{folder} holds mismatched IDX files; delete them and re-run")
        images = images[:, None]
    images, labels = images[:limit], labels[:limit]
    return normalize(images, info), torch.from_numpy(np.ascontiguousarray(labels))


def cifar_augmentation(name: str = "cifar10", *, seed: int | None = None) -> RandomCropFlip:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip for normalized CIFAR batches.

    The padding is black in pixel space, i.e. -mean/std after normalization, as in the usual
    torchvision pipeline that pads before Normalize.
    """
    info = DATASETS[canonical_name(name)]
    fill = [-m / s for m, s in zip(info.mean, info.std, strict=True)]
    return RandomCropFlip(padding=4, flip=True, fill=fill, seed=seed)
