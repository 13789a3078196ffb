"""CIFAR-10/100 from the official binary version: locate or download, then read with numpy."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .cache import atomic_path, log, write_probe
from .catalog import CifarArchive
from .errors import DataError
from .sources import MIRROR_ENV, URL_TIMEOUT_S

IMAGE_BYTES = 3 * 32 * 32


def record_bytes(spec: CifarArchive) -> int:
    return spec.label_bytes + IMAGE_BYTES


def check_cifar_file(path: Path, spec: CifarArchive) -> int:
    """Check a placed .bin file's record structure (size only); return its record count."""
    size = path.stat().st_size
    rec = record_bytes(spec)
    if size == 0 or size % rec:
        raise DataError(
            f"{path} is {size} bytes, not a whole number of {rec}-byte {spec.name} records; "
            f"replace it with the file from {spec.archive}"
        )
    return size // rec


def read_cifar_bin(path: Path, spec: CifarArchive) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,3,32,32], labels int64 [N]); CIFAR-100 yields the fine labels."""
    n = check_cifar_file(path, spec)
    records = np.fromfile(path, dtype=np.uint8).reshape(n, record_bytes(spec))
    labels = records[:, spec.label_bytes - 1].astype(np.int64)  # last label byte = (fine) label
    if labels.max(initial=0) >= spec.num_classes:
        raise DataError(
            f"{path} has label {int(labels.max())} >= {spec.num_classes}; it is not a "
            f"{spec.name} binary file, replace it with the one from {spec.archive}"
        )
    images = records[:, spec.label_bytes :].reshape(n, 3, 32, 32)
    return images, labels


def read_cifar_split(
    folder: Path, spec: CifarArchive, train: bool
) -> tuple[np.ndarray, np.ndarray]:
    parts = [
        read_cifar_bin(folder / f, spec) for f in (spec.train_files if train else spec.test_files)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _complete(folder: Path, spec: CifarArchive) -> bool:
    files = [folder / f for f in (*spec.train_files, *spec.test_files)]
    present = [f.is_file() for f in files]
    if any(present) and not all(present):
        missing = ", ".join(f.name for f, ok in zip(files, present, strict=True) if not ok)
        raise DataError(
            f"{folder} is incomplete (missing {missing}); extract {spec.archive} there again"
        )
    if not all(present):
        return False
    for f in files:
        check_cifar_file(f, spec)
    return True


def cached_cifar_folder(spec: CifarArchive, cache: Path) -> Path | None:
    """The cached folder holding all .bin files (whole records), or None if there is none."""
    for folder in (cache / spec.name / spec.folder, cache / spec.folder):
        if _complete(folder, spec):
            return folder
    return None


def fetch_cifar(spec: CifarArchive, cache: Path, progress: bool) -> Path:
    """The folder holding the .bin files: placed by hand, or downloaded once and md5-checked."""
    found = cached_cifar_folder(spec, cache)
    if found is not None:
        return found
    dest = cache / spec.name
    mirror = os.environ.get(MIRROR_ENV)
    url = f"{mirror.rstrip('/')}/{spec.name}/{spec.archive}" if mirror else spec.url
    created = not dest.exists()
    try:
        reason = write_probe(dest)
        if reason is not None:
            raise DataError(
                f"the {spec.name} cache {dest} is not writable ({reason}) and lacks "
                f"{spec.folder}; fetch into a writable cache with `fsnn data fetch {spec.name} "
                f"--dir DIR` (or $FSNN_DATA=DIR), or make {dest} writable and re-run"
            )
        _download_and_extract(spec, url, dest, progress)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest / spec.folder


def _download_and_extract(spec: CifarArchive, url: str, dest: Path, progress: bool) -> None:
    log(progress, f"fetching {spec.name} from {url} ...")
    archive = dest / spec.archive
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with atomic_path(archive) as tmp:
            with (
                urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response,
                tmp.open("wb") as out,
            ):
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != spec.md5:
                raise DataError(
                    f"checksum mismatch for {spec.archive} downloaded from {url} (md5 "
                    f"{digest.hexdigest()} != {spec.md5}); it was removed, re-run to download "
                    f"it again"
                )
    except OSError as exc:
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        raise DataError(
            f"cannot download {spec.name} from {url} ({reason}); download {spec.archive} "
            f"elsewhere and place its extracted {spec.folder} folder in {dest}"
        ) from None
    try:
        with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest) as tmp_dir:
            with tarfile.open(archive, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(f"{spec.folder}/")]
                tar.extractall(tmp_dir, members=members, filter="data")
            extracted = Path(tmp_dir) / spec.folder
            if not _complete(extracted, spec):
                raise DataError(f"{spec.archive} lacks the expected files; delete it and re-run")
            os.replace(extracted, dest / spec.folder)
    except tarfile.TarError as exc:
        raise DataError(f"cannot extract {archive}: {exc}; delete it and re-run") from None
    finally:
        archive.unlink(missing_ok=True)
    log(progress, f"  {spec.name}: ok")
