"""Read a Debian package without dpkg or root: a tiny `ar` reader plus `tarfile`."""

from __future__ import annotations

import importlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

from .errors import DataError

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an `ar` archive (the container format of a .deb), by name."""
    if not data.startswith(_AR_MAGIC):
        raise DataError("not a Debian package (no ar magic); delete it and re-run")
    members: dict[str, bytes] = {}
    pos = len(_AR_MAGIC)
    while pos + _AR_HEADER <= len(data):
        header = data[pos : pos + _AR_HEADER]
        if header[58:60] != b"`\n":
            raise DataError("corrupt Debian package (bad ar member header); delete it and re-run")
        name = header[0:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DataError("corrupt Debian package (bad ar member size)") from None
        start = pos + _AR_HEADER
        if start + size > len(data):
            raise DataError("truncated Debian package; delete it and re-run")
        members[name] = data[start : start + size]
        pos = start + size + (size % 2)  # members are padded to an even offset
    return members


def _zstd_decompress(payload: bytes, deb: Path) -> bytes:
    for module_name in ("compression.zstd", "zstandard"):  # Python >= 3.14, or the PyPI package
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if module_name == "zstandard":
            return bytes(module.ZstdDecompressor().decompressobj().decompress(payload))
        return bytes(module.decompress(payload))
    if zstd := shutil.which("zstd"):
        return subprocess.run([zstd, "-dc"], input=payload, capture_output=True, check=True).stdout
    if dpkg_deb := shutil.which("dpkg-deb"):
        return subprocess.run(
            [dpkg_deb, "--fsys-tarfile", str(deb)], capture_output=True, check=True
        ).stdout
    raise DataError(
        f"{deb.name} is zstd-compressed and no zstd decoder was found; "
        "install one (apt-get install zstd, or pip install zstandard) and re-run"
    )


def open_data_tar(deb: Path) -> tarfile.TarFile:
    """The package's file-system tarball (data.tar.{xz,gz,bz2,zst} or plain data.tar)."""
    members = ar_members(deb.read_bytes())
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise DataError(f"{deb.name} holds no data.tar member; delete it and re-run")
    payload = members[name]
    if name.endswith(".zst"):
        payload = _zstd_decompress(payload, deb)
    try:
        return tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")
    except tarfile.TarError as exc:
        raise DataError(f"cannot read {name} in {deb.name}: {exc}") from None
