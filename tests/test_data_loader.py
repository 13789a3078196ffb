"""Sharded loaders, batch-wise augmentation and the data set registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from fsnn.platform.data import (
    DATASETS,
    DataError,
    RandomCropFlip,
    cifar_augmentation,
    load_dataset,
    make_loader,
)


def _indices(loader: torch.utils.data.DataLoader) -> list[int]:
    out: list[int] = []
    for images, labels in loader:
        assert torch.equal(images[:, 0, 0, 0].long(), labels)  # image i carries its index
        out += labels.tolist()
    return out


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return images, torch.arange(n)


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_follow_distributed_sampler(drop_last: bool) -> None:
    images, labels = _data(23)
    shards = []
    for rank in range(3):
        loader = make_loader(
            images, labels, 4, shuffle=True, seed=5, rank=rank, world_size=3, drop_last=drop_last
        )
        loader.set_epoch(2)
        reference = DistributedSampler(
            range(23), num_replicas=3, rank=rank, shuffle=True, seed=5, drop_last=drop_last
        )
        reference.set_epoch(2)
        want = list(reference)
        if drop_last:
            want = want[: len(want) // 4 * 4]
        got = _indices(loader)
        assert got == want
        shards.append(got)
    if not drop_last:  # padded by repetition: every sample seen, shards equal in size
        assert set().union(*map(set, shards)) == set(range(23))
        assert len({len(s) for s in shards}) == 1


def test_set_epoch_reshuffles_reproducibly() -> None:
    images, labels = _data(50)
    loader = make_loader(images, labels, 8, shuffle=True, seed=1)
    first = _indices(loader)
    assert _indices(loader) == first
    loader.set_epoch(1)
    second = _indices(loader)
    assert second != first and sorted(second) == list(range(50))
    unshuffled = make_loader(images, labels, 8, shuffle=False, seed=1)
    assert _indices(unshuffled) == list(range(50))


def test_bad_rank_is_rejected() -> None:
    images, labels = _data(4)
    with pytest.raises(ValueError, match="rank"):
        make_loader(images, labels, 2, shuffle=False, seed=0, rank=2, world_size=2)


def _crop_kind(padded: np.ndarray, out: np.ndarray, p: int) -> str:
    """'plain' or 'flipped' when `out` is a (mirrored) window of `padded`, else 'none'."""
    h, w = out.shape[-2:]
    for oy in range(2 * p + 1):
        for ox in range(2 * p + 1):
            crop = padded[:, oy : oy + h, ox : ox + w]
            if np.array_equal(crop, out):
                return "plain"
            if np.array_equal(crop[:, :, ::-1], out):
                return "flipped"
    return "none"


def test_random_crop_flip_yields_padded_crops_and_flips() -> None:
    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    fill = [-1.0, -2.0, -3.0]
    out = RandomCropFlip(2, fill=fill, seed=3)(images)
    assert out.shape == images.shape
    kinds = []
    for img, res in zip(images.numpy(), out.numpy(), strict=True):
        padded = np.stack([np.pad(img[c], 2, constant_values=fill[c]) for c in range(3)])
        kinds.append(_crop_kind(padded, res, 2))
    assert "none" not in kinds
    assert 10 < kinds.count("flipped") < 54
    assert not torch.equal(out, images)
    assert torch.equal(RandomCropFlip(0, flip=False)(images), images)
    again = RandomCropFlip(2, fill=fill, seed=3)(images)
    assert torch.equal(again, out)  # same seed, same draws


def test_loader_applies_batch_transform_and_reseeds_per_epoch() -> None:
    images = torch.rand(32, 3, 8, 8)
    labels = torch.arange(32)
    loader = make_loader(
        images, labels, 32, shuffle=False, seed=0, transform=RandomCropFlip(4, seed=0)
    )
    ((a, la),) = list(loader)
    ((b, _),) = list(loader)
    assert torch.equal(la, labels) and a.shape == images.shape
    assert torch.equal(a, b)  # same epoch, same augmentation
    loader.set_epoch(1)
    ((c, _),) = list(loader)
    assert not torch.equal(a, c)


def test_cifar_augmentation_pads_with_normalized_black() -> None:
    aug = cifar_augmentation("cifar10", seed=0)
    black = torch.zeros(1, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    normalized = (black - mean) / std
    assert torch.allclose(aug(normalized), normalized)  # padding is black too


def test_registry_metadata() -> None:
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10", "cifar100", "nmnist"}
    fashion = DATASETS["fashion-mnist"]
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[-1] == "Ankle boot"
    assert len(fashion.classes) == 10 and fashion.shape == (1, 28, 28)
    assert DATASETS["mnist"].classes == tuple("0123456789")
    assert DATASETS["mnist"].mean == (0.1307,) and DATASETS["mnist"].std == (0.3081,)
    assert len(DATASETS["cifar100"].classes) == DATASETS["cifar100"].num_classes == 100
    assert DATASETS["cifar10"].shape == (3, 32, 32)
    assert DATASETS["nmnist"].event_based and DATASETS["nmnist"].shape[1:] == (2, 34, 34)


def test_bad_split_is_a_data_error(tmp_path) -> None:
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("mnist", "val", tmp_path)  # type: ignore[arg-type]
