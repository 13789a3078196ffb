"""The documentation site as `make docs` builds it, built once per test session from a copy of
docs/ and mkdocs.yml in a temporary folder (the checkout is left as it was): fresh generated
references, the package link tree the API reference is read from, `mkdocs build --strict`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("reference/cli.md", "reference/config.md")
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner


def run(what: str, *args: str | Path, cwd: Path = ROOT) -> None:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, f"{what} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def link_tree(root: Path) -> Path:
    """``root/build/pkgtree/fsnn`` as `make pkgtree` lays it out: api/ as fsnn/, links to the
    subpackages, and platform/ as a tree of links with an empty ``__init__.py`` of its own
    (griffe skips a folder without one inside a package)."""
    pkg = root / "build" / "pkgtree" / "fsnn"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "api", pkg, copy_function=os.symlink, ignore=skip)
    for d in ("backends", "pipelines"):
        (pkg / d).symlink_to(ROOT / d)
    shutil.copytree(ROOT / "platform", pkg / "platform", copy_function=os.symlink, ignore=skip)
    (pkg / "platform" / "__init__.py").touch()
    return pkg


def build_site(tmp: Path) -> Path:
    """Build the site into ``tmp/site``; returns ``tmp`` (its docs/ holds the references)."""
    shutil.copytree(ROOT / "docs", tmp / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in GENERATED:  # whatever an earlier `make docs` left must not count
        (tmp / "docs" / name).unlink(missing_ok=True)
    shutil.copy(ROOT / "mkdocs.yml", tmp / "mkdocs.yml")
    link_tree(tmp)
    for name in GENERATED:
        script = ROOT / "docs" / "gen" / f"{Path(name).stem}_reference.py"
        run(script.name, sys.executable, script, "--out", tmp / "docs" / name)
    run("mkdocs build --strict", sys.executable, "-m", "mkdocs", "build", "--strict",
        "--config-file", tmp / "mkdocs.yml", "--site-dir", tmp / "site", cwd=tmp)
    return tmp
