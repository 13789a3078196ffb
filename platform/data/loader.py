"""DataLoaders that yield one rank's shard, with batch-wise tensor indexing and transforms."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


class BatchTensorDataset(TensorDataset):
    """A TensorDataset that the DataLoader indexes with a whole list of indices at once."""

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def _as_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """collate_fn for BatchTensorDataset: its __getitems__ already returns stacked tensors."""
    return batch


class ShardedLoader(DataLoader[Any]):
    """A DataLoader over a DistributedSampler; call `set_epoch(e)` each epoch to reshuffle.

    A batch `transform` is applied to the first tensor of each batch in the main process (so it
    can run on an accelerator and its random state is not copied into every worker).
    """

    def __init__(
        self, *args: Any, seed: int, transform: BatchTransform | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle order and augmentation draws for `epoch` (same epoch, same batches)."""
        self.epoch = epoch
        sampler = self.sampler
        assert isinstance(sampler, DistributedSampler)
        sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        batches = super().__iter__()
        if self.transform is None:
            yield from batches
            return
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:  # draws differ per epoch and per rank, reproducibly
            rank = getattr(self.sampler, "rank", 0)
            reseed((self.seed * 1_000_003 + self.epoch * 1_009 + rank) % (1 << 63))
        for first, *rest in batches:
            yield (self.transform(first), *rest)


def _sampler(
    dataset: Dataset[Any], *, shuffle: bool, seed: int, rank: int, world_size: int, drop_last: bool
) -> DistributedSampler[Any]:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    return DistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


def make_loader(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    transform: BatchTransform | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> ShardedLoader:
    """Batches (images, labels) of this rank's shard, DistributedSampler semantics.

    Works without a process group: rank/world_size are explicit. With world_size > 1 and
    drop_last=False the sampler pads by repeating samples so every rank gets as many; with
    drop_last=True it drops the tail instead and the loader drops a final short batch.
    `transform` (e.g. RandomCropFlip) runs on whole image batches; rows are gathered with one
    tensor index per batch (no per-sample Python loop).
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    dataset = BatchTensorDataset(images, labels)
    return ShardedLoader(
        dataset,
        batch_size=batch_size,
        sampler=_sampler(
            dataset,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        ),
        drop_last=drop_last,
        collate_fn=_as_batch,
        num_workers=num_workers,
        pin_memory=pin_memory,
        seed=seed,
        transform=transform,
    )


def make_dataset_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> ShardedLoader:
    """Like make_loader for any map-style dataset (e.g. NMNISTFrames), default collation."""
    return ShardedLoader(
        dataset,
        batch_size=batch_size,
        sampler=_sampler(
            dataset,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        ),
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        seed=seed,
    )
