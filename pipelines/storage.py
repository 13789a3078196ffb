"""Where runs keep their checkpoints (Ray's ``storage_path``): resolved and checked before Ray
starts, so an unwritable folder or an unknown URI scheme fails in one line, not in a worker."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from fsnn.platform.errors import FsnnError

DEFAULT_STORAGE = "runs"
# the URI schemes pyarrow.fs.FileSystem.from_uri resolves (credentials and regions are resolved
# when Ray writes, so they are not tried here: that would need the network)
URI_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "mock"})


class StorageError(FsnnError, ValueError):
    """The checkpoint storage cannot be used; the message names it and the fix."""


def resolve_storage(path: str | None) -> str:
    """``--storage``, else $FSNN_STORAGE, else ./runs; local paths made absolute (Ray workers
    run in other working directories)."""
    s = path or os.environ.get("FSNN_STORAGE") or DEFAULT_STORAGE
    return s if "://" in s else str(Path(s).resolve())


def check_storage(storage: str) -> None:
    """A local folder must be creatable and writable (nothing is created here); a URI's scheme
    must name a filesystem pyarrow (which Ray Train writes through) has."""
    if "://" in storage and not storage.startswith("file://"):
        scheme = storage.split("://", 1)[0].lower()
        if scheme not in URI_SCHEMES:
            raise StorageError(f"--storage {storage}: no filesystem for the scheme {scheme!r} "
                               f"(Ray Train writes through pyarrow, which knows "
                               f"{', '.join(sorted(URI_SCHEMES))}); use a shared path or one "
                               f"of those URIs")
        return
    folder = Path(unquote(urlparse(storage).path)) if "://" in storage else Path(storage)
    why = unwritable(folder)
    if why:
        raise StorageError(f"--storage {storage}: not writable ({why}); pass a writable folder "
                           f"(on a cluster: one every node sees) or a URI such as "
                           f"s3://bucket/runs")


def unwritable(folder: Path) -> str | None:
    """Why files cannot be made in ``folder`` (or, if it does not exist yet, in the nearest
    folder above it, where it would be made), or None. A real write, not ``os.access``, which
    says yes to root on a read-only mount; nothing is left behind."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".fsnn-write-check"):
            pass
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


__all__ = ["DEFAULT_STORAGE", "StorageError", "check_storage", "resolve_storage", "unwritable"]
