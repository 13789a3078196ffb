"""`fetch_dataset`: make a data set's files present and verified in the local cache."""

from __future__ import annotations

import subprocess
import tarfile
import zlib
from contextlib import ExitStack, suppress
from pathlib import Path

from . import sources as _sources
from .cache import (
    ChecksumMismatch,
    cache_root,
    log,
    os_reason,
    read_stamp,
    sha256_file,
    stamped_ok,
    try_write_stamp,
    write_probe,
    write_verified,
)
from .catalog import CIFAR_DATASETS, IDX_DATASETS, KNOWN_NAMES, NMNIST_NAME, FileSpec, IdxDataset
from .errors import DataError

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
    "n-mnist": "nmnist",
    "n_mnist": "nmnist",
}

# Errors that mean "this source did not work here"; anything else is a bug and propagates.
_SOURCE_ERRORS = (
    _sources.SourceUnavailable,
    OSError,
    EOFError,
    KeyError,
    tarfile.TarError,
    zlib.error,
    subprocess.SubprocessError,
    DataError,
)


def canonical_name(name: str) -> str:
    """The registry key for `name` (case-insensitive, a few aliases); DataError if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in KNOWN_NAMES:
        raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(KNOWN_NAMES)}")
    return key


def fetch_dataset(name: str, root: Path | None = None, *, progress: bool = True) -> Path:
    """Make data set `name` present and verified under the cache; return the folder holding it.

    `root` is the cache directory (default $FSNN_DATA, else ~/.cache/fsnn/data). MNIST and
    Fashion-MNIST land as the four raw IDX files in `<cache>/<name>/`; CIFAR returns the
    extracted binary-version folder; N-MNIST returns the folder holding Train/ and Test/.
    A warm cache costs a few `stat` calls. Raises DataError with a one-line remedy.
    """
    key = canonical_name(name)
    cache = cache_root(root)
    if key in IDX_DATASETS:
        return _fetch_idx(IDX_DATASETS[key], cache, progress)
    if key in CIFAR_DATASETS:
        from .cifar import fetch_cifar

        return fetch_cifar(CIFAR_DATASETS[key], cache, progress)
    assert key == NMNIST_NAME
    from .nmnist import locate_nmnist

    return locate_nmnist(cache)


def _check_cached(dest: Path, spec: IdxDataset, progress: bool) -> list[FileSpec]:
    """Verify what is in `dest`; remove corrupt files; return the specs still missing."""
    stamp = read_stamp(dest)
    missing: list[FileSpec] = []
    for file in spec.files:
        path = dest / file.name
        if stamped_ok(dest, file, stamp):
            continue
        if not path.is_file():
            missing.append(file)
            continue
        if _hash_matches(path, file):
            continue
        try:
            path.unlink()
        except OSError as exc:
            raise _not_writable(spec, dest, f"{file.name} is corrupt", os_reason(exc)) from None
        log(progress, f"removed corrupt cached file {path} (checksum mismatch); fetching it again")
        missing.append(file)
    return missing


def _hash_matches(path: Path, file: FileSpec) -> bool:
    try:
        return path.stat().st_size == file.size and sha256_file(path) == file.sha256
    except OSError as exc:
        raise DataError(
            f"cannot read cached file {path} ({os_reason(exc)}); fix the permissions of "
            f"{path.parent} or use another cache with --dir DIR or $FSNN_DATA"
        ) from None


def _not_writable(spec: IdxDataset, dest: Path, what: str, reason: str) -> DataError:
    return DataError(
        f"the {spec.name} cache {dest} is not writable ({reason}) and {what}; fetch into a "
        f"writable cache with `fsnn data fetch {spec.name} --dir DIR` (or $FSNN_DATA=DIR), or "
        f"make {dest} writable and re-run"
    )


def _fetch_idx(spec: IdxDataset, cache: Path, progress: bool) -> Path:
    dest = cache / spec.name
    created = not dest.exists()
    missing = _check_cached(dest, spec, progress) if not created else list(spec.files)
    if missing:
        try:
            reason = write_probe(dest)
            if reason is not None:
                names = ", ".join(f.name for f in missing)
                raise _not_writable(spec, dest, f"lacks {names}", reason)
            _fetch_from_sources(spec, dest, missing, progress)
        except BaseException:
            if created:
                with suppress(OSError):
                    dest.rmdir()  # only succeeds when nothing was left behind
            raise
    if not _stamp_is_current(dest, spec):
        reason = try_write_stamp(dest, spec.files)
        if reason is not None:
            log(
                progress,
                f"note: the files in {dest} are valid but their stamp could not be updated "
                f"({reason}), so the next run hashes them again; to avoid that, run `fsnn data "
                f"verify {spec.name} --dir {cache}` as the cache's owner",
            )
    return dest


def _stamp_is_current(dest: Path, spec: IdxDataset) -> bool:
    stamp = read_stamp(dest)
    return all(stamped_ok(dest, f, stamp) for f in spec.files)


def _fetch_from_sources(
    spec: IdxDataset, dest: Path, missing: list[FileSpec], progress: bool
) -> None:
    tried: list[str] = []
    hints: list[str] = []
    bases: list[str] = []
    mismatch: tuple[str, str] | None = None
    for source in _sources.sources_for(spec):
        log(progress, f"fetching {spec.name} from {source.label} ...")
        _sources.SOURCE_STATS[source.kind] += 1
        try:
            with ExitStack() as stack:
                open_file = source.stage(stack, progress)
                for file in missing:
                    with open_file(file.name) as stream:
                        write_verified(stream, dest / file.name, file)
                    log(progress, f"  {file.name}: ok")
            return
        except ChecksumMismatch as exc:
            mismatch = mismatch or (str(exc), source.label)
            tried.append(f"{source.label}: checksum mismatch for {exc}")
        except _SOURCE_ERRORS as exc:
            tried.append(f"{source.label}: {_one_line(exc)}")
        log(progress, f"  not available: {tried[-1].removeprefix(source.label + ': ')}")
        if source.kind == "url":
            bases.append(source.label)
        else:
            hints.append(source.hint)
        missing = [f for f in missing if not (dest / f.name).is_file()]
    if mismatch is not None:
        file_name, label = mismatch
        raise DataError(
            f"checksum mismatch for {spec.name} file {file_name} from {label}; the bad file was "
            f"removed, re-run to fetch it again or put a verified copy in {dest}"
        )
    if bases:
        hints.append(f"download each <file>.gz from {' or '.join(bases)} and gunzip it into DIR")
    names = ", ".join(f.name for f in spec.files)
    raise DataError(
        f"no source could provide {spec.name} (tried: {'; '.join(tried)}); install it by hand: "
        f"{' or '.join(hints)} (DIR = {dest}), or put the raw files {names} in {dest}"
    )


def _one_line(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # urllib's URLError wraps the socket error
    text = " ".join(str(reason if reason is not None else exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
