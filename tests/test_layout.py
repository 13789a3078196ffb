"""The repository layout the owner asked for, and the CLI's surface."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_stdlib_platform_is_not_shadowed_from_the_repo_root() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}
    # and the heavy libraries import from the root too
    subprocess.run([sys.executable, "-c", "import torch, fsnn.platform.engine"], cwd=ROOT,
                   check=True, capture_output=True)


def test_every_code_folder_is_listed_in_pyproject() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = cfg["package-dir"]
    listed = set(cfg["packages"])
    for pkg, folder in mapping.items():
        base = ROOT / folder
        for d in [base, *[p for p in base.rglob("*") if p.is_dir()]]:
            if d.name == "__pycache__" or not any(d.glob("*.py")):
                continue
            name = ".".join([pkg, *d.relative_to(base).parts])
            assert name in listed, f"{name} ({d}) is missing from [tool.setuptools] packages"


def test_core_imports_without_heavy_dependencies() -> None:
    code = ("import sys, fsnn.platform.zoo, fsnn.platform.trainer, fsnn.platform.spec;"
            "heavy = [m for m in ('ray', 'mlflow', 'pyNN', 'nest', 'spynnaker', 'tonic')"
            " if m in sys.modules]; print(heavy); assert not heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_cli_lists_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "fsnn.pipelines.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for cmd in ("train", "tune", "deploy", "pipeline", "export", "data"):
        assert cmd in out
    for cmd in ("train", "tune", "deploy", "pipeline", "export", "data"):
        sub = subprocess.run([sys.executable, "-m", "fsnn.pipelines.cli", cmd, "--help"],
                             capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: fsnn" in sub.stdout, cmd
