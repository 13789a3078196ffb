"""`verify_dataset`: re-hash a cached data set's files against the catalog, on demand."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from .cache import cache_root, os_reason, read_stamp, sha256_file, stamped_ok, try_write_stamp
from .catalog import IDX_DATASETS, FileSpec
from .errors import DataError
from .fetch import canonical_name

FileStatus = Literal["ok", "corrupt", "missing", "unreadable"]


@dataclass(frozen=True)
class FileVerdict:
    """One file of the data set: its status and, when not ok, what is wrong."""

    name: str
    status: FileStatus
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_dataset` found in `folder`, one verdict per catalog file."""

    dataset: str
    folder: Path
    files: tuple[FileVerdict, ...]
    stamp_error: str | None = None  # why the stamp could not be rewritten (read-only cache)

    @property
    def ok(self) -> bool:
        return all(f.status == "ok" for f in self.files)

    def lines(self) -> list[str]:
        """One line per file, then a summary line (what `fsnn data verify` prints on stdout)."""
        out = [
            f"{f.status:<10} {f.name}" + (f"  ({f.detail})" if f.detail else "") for f in self.files
        ]
        counts = Counter(f.status for f in self.files)
        summary = f"{self.dataset} in {self.folder}: "
        summary += ", ".join(f"{counts[s]} {s}" for s in get_args(FileStatus) if counts[s])
        if not self.ok:
            summary += (
                f"; re-fetch with `fsnn data fetch {self.dataset} --dir {self.folder.parent}`"
            )
        return [*out, summary]

    def stamp_note(self) -> str | None:
        """A line for stderr when the stamp could not be rewritten; None otherwise."""
        if self.stamp_error is None:
            return None
        return (
            f"note: could not update the stamp in {self.folder} ({self.stamp_error}); "
            "fetches will hash the files again until the cache's owner runs this command"
        )


def verify_dataset(name: str, root: Path | None = None) -> VerifyReport:
    """Hash every cached file of data set `name` (no stamp shortcut) and compare with the catalog.

    Nothing is deleted or fetched. The stamp is rewritten for the files found ok, unless it
    already vouches for them; when it cannot be written, `stamp_error` says why. Only data sets
    whose catalog lists per-file SHA-256 (MNIST, Fashion-MNIST) can be verified; others raise
    DataError.
    """
    key = canonical_name(name)
    if key not in IDX_DATASETS:
        raise DataError(
            f"the catalog has no per-file checksums for {key}, so it cannot be verified by hash; "
            f"verifiable data sets: {', '.join(IDX_DATASETS)}"
        )
    spec = IDX_DATASETS[key]
    folder = cache_root(root) / key
    verdicts = tuple(_verdict(folder / f.name, f) for f in spec.files)
    good = tuple(f for f, v in zip(spec.files, verdicts, strict=True) if v.status == "ok")
    stamp_error = None
    stamp = read_stamp(folder)
    if good and not all(stamped_ok(folder, f, stamp) for f in good):
        stamp_error = try_write_stamp(folder, good)
    return VerifyReport(key, folder, verdicts, stamp_error)


def _verdict(path: Path, spec: FileSpec) -> FileVerdict:
    if not path.is_file():
        return FileVerdict(spec.name, "missing")
    try:
        size = path.stat().st_size
        if size != spec.size:
            return FileVerdict(spec.name, "corrupt", f"{size} bytes, expected {spec.size}")
        digest = sha256_file(path)
    except OSError as exc:
        return FileVerdict(spec.name, "unreadable", os_reason(exc))
    if digest != spec.sha256:
        return FileVerdict(
            spec.name, "corrupt", f"sha256 {digest[:12]}…, expected {spec.sha256[:12]}…"
        )
    return FileVerdict(spec.name, "ok")
