"""Small real data caches for the data-layer tests, and a way to make one truly read-only.

`small_mnist` writes the four MNIST IDX files (a few 28x28 images) and returns a catalog entry
with their sizes and SHA-256; a test puts it in `IDX_DATASETS["mnist"]` with monkeypatch.setitem,
so every code path (stamp, hashes, headers) runs on real files of the real format.

`read_only` must bind root, because CI runs the tests as root and root ignores permission bits
(`chmod a-w` and `os.access` prove nothing there). Tried on the development machine (root, ext4):
a read-only bind mount (`mount --bind X X; mount -o remount,bind,ro X`) fails every write with
EROFS, exactly what a read-only container image layer or NFS export gives, so it is the first
choice; `chattr -R +i` (EPERM) also works there and is the fallback; `mount -t tmpfs -o ro` works
too but would hide the files. Not root: `chmod -R a-w`. Every mechanism is checked by a real write
attempt before it is used; if none works the test is skipped and says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fsnn.platform.data.catalog import IDX_FILES, FileSpec, IdxDataset


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX blob: magic 00 00 <code> <ndim>, big-endian uint32 dims, then the payload."""
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def small_mnist(folder: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> IdxDataset:
    """Write the four MNIST IDX files into `folder`; return a catalog entry vouching for them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, bytes] = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        blobs[f"{prefix}-images-idx3-ubyte"] = idx_bytes(0x08, (n, 28, 28), pixels.tobytes())
        blobs[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(0x08, (n,), labels.tobytes())
    specs = []
    for name in IDX_FILES:
        (folder / name).write_bytes(blobs[name])
        specs.append(FileSpec(name, len(blobs[name]), hashlib.sha256(blobs[name]).hexdigest()))
    return IdxDataset("mnist", tuple(specs), None, None, None, ())


def _write_fails(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return True
    probe.unlink()
    return False


def _run(cmd: tuple[str, ...]) -> bool:
    if shutil.which(cmd[0]) is None:
        return False
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


Mechanism = tuple[str, tuple[tuple[str, ...], ...], tuple[str, ...]]


def _mechanisms(folder: Path) -> list[Mechanism]:
    """(name, commands that make `folder` read-only, command that undoes them)."""
    path = str(folder)
    if os.geteuid() != 0:
        return [("chmod a-w", (("chmod", "-R", "a-w", path),), ("chmod", "-R", "u+w", path))]
    bind = (("mount", "--bind", path, path), ("mount", "-o", "remount,bind,ro", path))
    return [
        ("read-only bind mount", bind, ("umount", path)),
        ("chattr +i", (("chattr", "-R", "+i", path),), ("chattr", "-R", "-i", path)),
    ]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """`folder` and all below it unwritable for this process, root included; yields how."""
    tried = []
    for name, on, off in _mechanisms(folder):
        first = _run(on[0])
        if first and all(_run(cmd) for cmd in on[1:]) and _write_fails(folder):
            try:
                yield name
            finally:
                _run(off)
            return
        if first:
            _run(off)
        tried.append(name)
    pytest.skip(f"cannot make a folder read-only for this user here (tried: {', '.join(tried)})")
