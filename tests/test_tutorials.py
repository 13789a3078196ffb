"""The tutorials (docs/tutorials/) do what they say.

Each page's ```python blocks are run in order as one script (one namespace, as a reader pastes
them into one session), in a fresh Python process whose working directory is a temporary
folder laid out like the reader's checkout (``configs/``), with MLflow pointed at a real
tracking server on loopback and checkpoints kept in that folder; the numbers the script prints
are then checked (NEST's agreement with torch is exactly 1.0, as docs/concepts/engines.md
claims and tests/test_nest_parity.py tests). Every ``fsnn ...`` command line in the ```bash and
```yaml blocks of every page must parse with the real CLI parser, and every file of this
repository those blocks name must exist; the cluster tutorial's commands cannot run here, so
that is what is checked of them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import RAY_TEST_ENV

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
PAGES = ("python-api.md", "tune-search.md", "hardware-in-the-loop.md", "cluster.md")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def blocks(page: str, *langs: str) -> list[str]:
    """The bodies of the page's fenced blocks of these languages, in order."""
    text = (TUTORIALS / page).read_text()
    return [body for lang, body in FENCE.findall(text) if lang in langs]


# -- the python blocks, run ----------------------------------------------------------------------


def run_page(page: str, tmp: Path, tracking: str, timeout: int = 480) -> str:
    """Run the page's python blocks as one script from ``tmp``; its output (stdout + stderr)."""
    code = "\n\n".join(blocks(page, "python"))
    assert code.strip(), f"{page} has no python block"
    script = tmp / "tutorial.py"
    script.write_text(code)
    (tmp / "configs").symlink_to(ROOT / "configs")  # the reader runs from the repository root
    env = {**os.environ, **RAY_TEST_ENV, "MLFLOW_TRACKING_URI": tracking,
           "FSNN_STORAGE": str(tmp / "runs"), "PYTHONUNBUFFERED": "1"}
    env.pop("FSNN_VERBOSE", None)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(script)], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=timeout)
    text = out.stdout + out.stderr
    print(f"{page}: {time.perf_counter() - t0:.0f} s")
    assert out.returncode == 0, f"{page} failed (exit {out.returncode}):\n{text[-6000:]}"
    return text


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in the output:\n{text[-4000:]}"
    return float(m.group(1))


@pytest.mark.slow
def test_python_api_tutorial(tmp_path: Path, tracking: str) -> None:
    out = run_page("python-api.md", tmp_path, tracking)
    assert "f400: IF neurons, T=5, V_th=2.0, fashion-mnist, 2 Ray Train workers" in out
    assert "[fsnn] epoch 1/1" in out
    assert number(r"test accuracy (\d\.\d+)", out) > 0.5
    assert "population h0: 400 IF neurons" in out and "projection fb: h0 -> h0" in out
    # the same random images on both engines: the same spikes for every neuron
    assert "the same count for every neuron on NEST: True" in out, out[-3000:]
    m = re.search(r"predictions torch: (\[.*?\])\s+nest: (\[.*?\])", out)
    assert m and m.group(1) == m.group(2), out[-3000:]
    # the deploys: NEST agrees with torch exactly, on predictions and on every spike count
    torch_acc = number(r"torch\s+\|\s+(\d\.\d+)", out)
    nest_acc = number(r"nest\s+\|\s+(\d\.\d+)", out)
    assert torch_acc > 0.5 and nest_acc == torch_acc
    assert number(r"predictions agree (\d\.\d+)", out) == 1.0
    assert number(r"spike counts agree (\d\.\d+)", out) == 1.0
    assert number(r"T=10: accuracy (\d\.\d+)", out) > 0.5


@pytest.mark.slow
def test_tune_search_tutorial(tmp_path: Path, tracking: str) -> None:
    out = run_page("tune-search.md", tmp_path, tracking)
    rows = re.findall(r"^\s*(\d)\s+T=(\d+)\s+V_th=(\d\.\d+)\s+test accuracy (\d\.\d+)\s+run (\w+)$",
                      out, flags=re.MULTILINE)
    assert len(rows) == 4, out[-4000:]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    assert {(int(r[1]), float(r[2])) for r in rows} == {(4, 1.0), (4, 2.0), (8, 1.0), (8, 2.0)}
    accs = [float(r[3]) for r in rows]
    assert accs == sorted(accs, reverse=True) and min(accs) > 0.3, accs
    assert len({r[4] for r in rows}) == 4  # a nested MLflow run per trial
    best = re.search(r"best: T=(\d+), V_th=(\d\.\d+)", out)
    assert best and (best.group(1), best.group(2)) == (rows[0][1], rows[0][2]), out[-3000:]
    assert "plots/tune.png" in out
    png = re.search(r"downloaded to (\S+tune\.png) \((\d+) bytes\)", out)
    assert png and int(png.group(2)) > 1000, out[-3000:]
    assert (tmp_path / png.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_hardware_in_the_loop_tutorial(tmp_path: Path, tracking: str) -> None:
    out = run_page("hardware-in-the-loop.md", tmp_path, tracking)
    base = number(r"engine-trained run \w+: test accuracy (\d\.\d+)", out)
    assert base > 0.5
    assert "forward nest: dropout 0" in out
    # NEST produced the forward rates of every training image
    assert number(r"NEST simulated (\d+) training images", out) == 512
    # the in-training evaluation on NEST: torch's predictions and spikes, exactly
    assert number(r"on NEST: accuracy (\d\.\d+)", out) > 0.5
    assert number(r"predictions agree (\d\.\d+)", out) == 1.0
    assert number(r"spike counts agree (\d\.\d+)", out) == 1.0
    tuned = number(r"after the NEST epoch: test accuracy (\d\.\d+)", out)
    assert abs(tuned - base) < 0.1  # it starts from the trained weights


# -- the command lines, parsed -------------------------------------------------------------------

# a path into this repository as a command names it (globs allowed), or a config inside the image
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:configs|infra|docs|benchmarks|tests)/[\w./*-]*[\w*])")
IMAGE_PATH = re.compile(r"/(?:opt|home/ray)/fsnn/(configs/[\w.-]+)")
BREAKS = {";", "&&", "||", "|", "&", "(", ")", ";;"}


def _logical_lines(script: str) -> Iterator[str]:
    """The block's lines with backslash continuations joined."""
    yield from script.replace("\\\n", " ").splitlines()


def _commands(line: str) -> Iterator[list[str]]:
    """Every ``fsnn ...`` command in a shell line, also inside quoted arguments (``--wrap '...'``,
    ``FSNN_TRAIN_CMD='fsnn tune ...'``) and after ``--`` (``ray job submit -- fsnn ...``)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        tokens = list(lex)
    except ValueError as exc:
        raise AssertionError(f"not a shell line ({exc}): {line}") from None
    start = True
    for i, tok in enumerate(tokens):
        if tok in BREAKS or tok == "--":
            start = True
            continue
        inner = re.search(r"(?:^|[\s=,])(fsnn\s.*)$", tok, re.DOTALL) if " " in tok else None
        if inner:  # a quoted argument holding a command line
            yield from _commands(inner.group(1))
        if start and re.match(r"^\w+=", tok):  # VAR=value before the command
            continue
        if start and tok == "fsnn":
            end = next((j for j in range(i + 1, len(tokens)) if tokens[j] in BREAKS),
                       len(tokens))
            yield tokens[i:end]
        start = False


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)


def page_commands(page: str) -> list[list[str]]:
    found: list[list[str]] = []
    for body in blocks(page, "bash", "sh", "shell", "console"):
        for line in _logical_lines(body):
            found.extend(_commands(line))
    for body in blocks(page, "yaml", "yml"):
        docs = list(yaml.safe_load_all(body))  # a yaml block must be valid YAML
        for text in (s for d in docs for s in _strings(d)):
            for line in _logical_lines(text):
                found.extend(_commands(line))
    return found


def test_every_tutorial_is_in_the_nav() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    tutorials = next(item["Tutorials"] for item in nav
                     if isinstance(item, dict) and "Tutorials" in item)
    listed = [next(iter(entry.values())) for entry in tutorials]
    assert listed == [f"tutorials/{p}" for p in PAGES]
    assert sorted(p.name for p in TUTORIALS.glob("*.md")) == sorted(PAGES)


def test_the_command_parser_finds_commands() -> None:
    line = ("FSNN_X=1 fsnn train c.yaml --set a=1 && ray job submit -- fsnn deploy R "
            "# fsnn comment; FSNN_TRAIN_CMD='fsnn tune t.yaml --resume'")
    assert list(_commands(line)) == [["fsnn", "train", "c.yaml", "--set", "a=1"],
                                     ["fsnn", "deploy", "R"]]
    quoted = "sbatch --export=ALL,FSNN_TRAIN_CMD='fsnn tune t.yaml --resume' job.sbatch"
    assert list(_commands(quoted)) == [["fsnn", "tune", "t.yaml", "--resume"]]
    assert list(_commands("kubectl create namespace fsnn")) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_fsnn_command_parses(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    from fsnn.pipelines.cli import build_parser

    commands = page_commands(page)
    if page != "python-api.md":
        assert commands, f"{page}: no fsnn command found in its bash/yaml blocks"
    for argv in commands:
        try:
            args = build_parser().parse_args(argv[1:])
        except SystemExit:
            raise AssertionError(f"{page}: `{shlex.join(argv)}` does not parse: "
                                 f"{capsys.readouterr().err.strip()}") from None
        assert args.command, argv


@pytest.mark.parametrize("page", PAGES)
def test_every_repository_path_exists(page: str) -> None:
    text = "\n".join(blocks(page, "bash", "sh", "shell", "console", "yaml", "yml", "python"))
    named = set(REPO_PATH.findall(text)) | set(IMAGE_PATH.findall(text))
    for path in sorted(named):
        assert any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists(), \
            f"{page} names {path}, which this repository does not have"
    if page == "cluster.md":
        assert {"infra/k8s/rayjob-train.yaml", "infra/slurm/fsnn-ray.sbatch"} <= named, named


def test_the_cluster_tutorials_python_compiles() -> None:
    """The cluster page's Python needs a cluster to run; it must at least be valid Python."""
    for i, body in enumerate(blocks("cluster.md", "python")):
        compile(body, f"cluster.md python block {i + 1}", "exec")
