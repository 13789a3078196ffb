"""Where data sets live on disk, atomic writes, and the `.verified` stamp for cheap re-checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .catalog import FileSpec

STAMP_NAME = ".verified"
_CHUNK = 1 << 20

# How many bytes this process has hashed; lets tests check that a warm cache is not re-hashed.
HASH_STATS: dict[str, int] = {"files": 0, "bytes": 0}


def cache_root(root: Path | str | None = None) -> Path:
    """The data cache: `root`, else $FSNN_DATA, else $XDG_CACHE_HOME/fsnn/data (~/.cache/...)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("FSNN_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fsnn" / "data"


def log(progress: bool, message: str) -> None:
    """One short progress line on stderr."""
    if progress:
        print(f"fsnn: {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    HASH_STATS["files"] += 1
    HASH_STATS["bytes"] += path.stat().st_size
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary path beside `dest`; moved onto `dest` on success, removed on any error."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.part"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class ChecksumMismatch(Exception):
    """Raised by `write_verified` when the streamed bytes do not match the expected digest."""


def write_verified(stream: BinaryIO, dest: Path, spec: FileSpec) -> None:
    """Copy `stream` into `dest` if its SHA-256 matches `spec`; `dest` is never left partial."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        with tmp.open("wb") as out:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        HASH_STATS["files"] += 1
        HASH_STATS["bytes"] += tmp.stat().st_size
        if digest.hexdigest() != spec.sha256:
            raise ChecksumMismatch(spec.name)


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_stamp(directory: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads((directory / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def write_stamp(directory: Path, specs: tuple[FileSpec, ...]) -> None:
    files = {s.name: {**_stat_key(directory / s.name), "sha256": s.sha256} for s in specs}
    with atomic_path(directory / STAMP_NAME) as tmp:
        tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))


def try_write_stamp(directory: Path, specs: tuple[FileSpec, ...]) -> str | None:
    """Write the stamp; None on success, else why it could not be written (read-only cache)."""
    try:
        write_stamp(directory, specs)
    except OSError as exc:
        return os_reason(exc)
    return None


def write_probe(directory: Path) -> str | None:
    """None if a file can be created in `directory` (made if absent), else why not.

    A real write attempt rather than `os.access`, which says yes to root on a read-only mount.
    """
    probe = directory / f".write-probe.{secrets.token_hex(6)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        return os_reason(exc)
    return None


def os_reason(exc: OSError) -> str:
    """An OSError in a few words: 'Read-only file system', 'Permission denied', ..."""
    return exc.strerror or str(exc) or type(exc).__name__


def stamped_ok(directory: Path, spec: FileSpec, stamp: dict[str, dict[str, object]]) -> bool:
    """True when the stamp vouches for the file as it is now (same digest, size and mtime)."""
    entry = stamp.get(spec.name)
    path = directory / spec.name
    if not isinstance(entry, dict) or entry.get("sha256") != spec.sha256 or not path.is_file():
        return False
    key = _stat_key(path)
    return (
        entry.get("size") == key["size"] == spec.size and entry.get("mtime_ns") == key["mtime_ns"]
    )
