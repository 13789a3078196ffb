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


# the code folders and the fsnn packages they are installed as (pyproject's package-dir)
PACKAGES = {"fsnn": "api", "fsnn.platform": "platform", "fsnn.backends": "backends",
            "fsnn.pipelines": "pipelines"}
# what each layer may import: platform <- backends <- pipelines <- fsnn (the API)
MAY_IMPORT = {"fsnn.platform": ("fsnn.platform",),
              "fsnn.backends": ("fsnn.platform", "fsnn.backends"),
              "fsnn.pipelines": ("fsnn.platform", "fsnn.backends", "fsnn.pipelines", "fsnn.jobs")}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every fsnn module each module imports, wherever the import statement is (module level,
    inside functions, under TYPE_CHECKING): an import circle through any of them is one."""
    import ast

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import submodule` imports the submodule (the package's
                # __init__ runs for every import below it anyway)
                subs = [f"{node.module}.{a.name}" for a in node.names]
                names = [n for n in subs if n in mods] or [node.module]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != m:
                    edges[m].add(name)
    return edges


def test_no_import_circles_and_layers_import_downwards() -> None:
    mods = _modules()
    edges = _imports(mods)
    for m, targets in edges.items():
        layer = next((p for p in MAY_IMPORT if m == p or m.startswith(p + ".")), None)
        if layer is None:
            continue
        bad = [t for t in targets if not any(t == a or t.startswith(a + ".")
                                             for a in MAY_IMPORT[layer])]
        assert not bad, f"{m} ({mods[m].relative_to(ROOT)}) imports {bad} from a layer above"
    # circles: depth-first search for a back edge
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                circle = [*path[path.index(t):], t]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m)


def test_the_package_imports_outside_the_checkout(tmp_path: Path) -> None:
    code = ("import fsnn, fsnn.platform.spec, fsnn.backends.nest.kernel, fsnn.pipelines.cli; "
            "print(fsnn.platform.spec.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().endswith("spec.py")
