"""`check_dataset`: a cheap look at a cached data set's headers, before any training starts."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

from .cache import cache_root, os_reason
from .catalog import CIFAR_DATASETS, IDX_DATASETS, CifarArchive, FileSpec, IdxDataset
from .cifar import cached_cifar_folder
from .errors import DataError
from .fetch import canonical_name
from .nmnist import locate_nmnist

_IDX_UBYTE = 0x08
_IDX_ITEM_SHAPE = {1: (), 3: (28, 28)}  # labels, images of the MNIST-style catalogs
_CIFAR100_COARSE = 20
_NAME_NDIM = re.compile(r"-idx(\d)-ubyte$")


def check_dataset(name: str, root: Path | None = None) -> None:
    """Check the headers of data set `name`'s cached files; DataError naming the file if not.

    Reads a few bytes per file and fetches nothing. IDX files (MNIST, Fashion-MNIST): size,
    magic and dimensions as the catalog has them. CIFAR: every .bin a whole number of records,
    its first label in range. N-MNIST: both splits present, each digit's first event file a
    whole number of 5-byte events. A full content check is `verify_dataset` (hashes every byte).
    """
    key = canonical_name(name)
    cache = cache_root(root)
    if key in IDX_DATASETS:
        spec = IDX_DATASETS[key]
        for file in spec.files:
            _check_idx_file(cache / key / file.name, file, spec, cache)
    elif key in CIFAR_DATASETS:
        _check_cifar(CIFAR_DATASETS[key], cache)
    else:
        _check_nmnist(locate_nmnist(cache))


def _refetch(name: str, cache: Path) -> str:
    return f"re-fetch with `fsnn data fetch {name} --dir {cache}`"


def _check_idx_file(path: Path, file: FileSpec, spec: IdxDataset, cache: Path) -> None:
    fix = _refetch(spec.name, cache)
    ndim = int(match.group(1)) if (match := _NAME_NDIM.search(file.name)) else 0
    item = _IDX_ITEM_SHAPE[ndim]
    header_len = 4 + 4 * ndim
    count = (file.size - header_len) // math.prod(item)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            header = fh.read(header_len)
    except FileNotFoundError:
        raise DataError(f"{path} is missing from the {spec.name} cache; {fix}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({os_reason(exc)}); fix its permissions") from None
    if size != file.size:
        raise DataError(f"{path} is {size} bytes, the catalog says {file.size}; {fix}")
    magic = int.from_bytes(header[:4], "big")
    want = (_IDX_UBYTE << 8) | ndim
    if magic != want:
        raise DataError(
            f"corrupt idx header in {path}: magic 0x{magic:08x}, expected 0x{want:08x}; {fix}"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims != (count, *item):
        raise DataError(
            f"corrupt idx header in {path}: dimensions {dims}, expected {(count, *item)}; {fix}"
        )


def _check_cifar(spec: CifarArchive, cache: Path) -> None:
    folder = cached_cifar_folder(spec, cache)  # also checks each file is whole records
    if folder is None:
        raise DataError(
            f"{spec.name} is not in the cache {cache}; fetch it with "
            f"`fsnn data fetch {spec.name} --dir {cache}`"
        )
    for name in (*spec.train_files, *spec.test_files):
        path = folder / name
        try:
            with path.open("rb") as fh:
                labels = fh.read(spec.label_bytes)
        except OSError as exc:
            raise DataError(f"cannot read {path} ({os_reason(exc)}); fix its permissions") from None
        coarse_bad = spec.label_bytes == 2 and labels[0] >= _CIFAR100_COARSE
        if labels[-1] >= spec.num_classes or coarse_bad:
            raise DataError(
                f"corrupt {spec.name} file {path}: first record's label bytes {list(labels)} "
                f"are out of range; {_refetch(spec.name, cache)}"
            )


def _check_nmnist(folder: Path) -> None:
    for split in ("Train", "Test"):
        digits = sorted(p for p in (folder / split).glob("[0-9]") if p.is_dir())
        firsts = [min(d.glob("*.bin"), default=None) for d in digits]
        present = [f for f in firsts if f is not None]
        if not present:
            raise DataError(
                f"no N-MNIST .bin files under {folder / split}/<digit>/; extract the archive there"
            )
        for path in present:
            size = path.stat().st_size
            if size == 0 or size % 5:
                raise DataError(
                    f"corrupt N-MNIST file {path}: {size} bytes is not a whole number of "
                    f"5-byte events; extract it from the N-MNIST archive again"
                )
