"""Every config field documents itself: each field of every model reachable from ``Config`` has
a ``Field(description=...)`` of a few words, and the generated reference
(docs/gen/config_reference.py, which reads descriptions only from the models) names every field
by its dotted path.

The models are walked here independently of the generator: through nested models, optionals,
unions, lists and mappings of models alike.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fsnn.platform.config import Config, ParamSpace, TrialResources

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "docs" / "gen" / "config_reference.py"
KEY = "<key>"  # a mapping's key in a dotted path, as the reference writes it
MIN_WORDS = 3


def _models_in(ann: Any) -> list[tuple[type[BaseModel], bool]]:
    """Every model an annotation holds, at any depth, and whether through a mapping's values."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [(ann, False)]
    args = get_args(ann)
    if get_origin(ann) is dict:
        return [(m, True) for m, _ in _models_in(args[1])] if len(args) == 2 else []
    return [found for a in args for found in _models_in(a)]


def _fields(model: type[BaseModel], prefix: str = "",
            seen: frozenset[type[BaseModel]] = frozenset()
            ) -> list[tuple[str, FieldInfo, bool]]:
    """``(dotted path, field, holds a section)`` for every field below ``model``."""
    out: list[tuple[str, FieldInfo, bool]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        inner = _models_in(field.annotation)
        out.append((path, field, bool(inner)))
        for sub, mapping in inner:
            if sub not in seen:
                out += _fields(sub, f"{path}.{KEY + '.' if mapping else ''}", seen | {model})
    return out


FIELDS = _fields(Config)


def test_the_walk_reaches_every_section() -> None:
    paths = {path for path, _, _ in FIELDS}
    assert {"T", "data.name", "method.backward_T", "optim.lr", "train.fused_step",
            "search.resources.cpus", f"search.space.{KEY}.loguniform", "deploy.backends",
            "hil.retries", "target_eval.every", "backend_options"} <= paths
    holders = {path for path, _, section in FIELDS if section}
    assert {"data", "method", "search", "search.space", "search.resources"} <= holders
    models = {m for _, f, _ in FIELDS for m, _ in _models_in(f.annotation)}
    assert {ParamSpace, TrialResources} <= models


@pytest.mark.parametrize(("path", "field"), [(p, f) for p, f, _ in FIELDS],
                         ids=[p for p, _, _ in FIELDS])
def test_every_field_has_a_description(path: str, field: FieldInfo) -> None:
    description = (field.description or "").strip()
    assert description, f"{path}: no Field(description=...) in platform/config.py"
    assert len(description.split()) >= MIN_WORDS, f"{path}: description too short: " \
        f"{description!r}"


def _code_spans(line: str) -> list[str]:
    return re.findall(r"`([^`]+)`", line)


def test_the_generated_reference_names_every_field(tmp_path: Path) -> None:
    out = tmp_path / "config.md"
    run = subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    page = out.read_text()
    lines = page.splitlines()
    rows = {line.split(" | ")[0].removeprefix("| ").strip("`"): line
            for line in lines if line.startswith("| `")}
    headings = {span for line in lines if line.startswith("## ")
                for span in _code_spans(line.split("{#")[0])}
    for path, field, section in FIELDS:
        if section:
            assert path in headings or f"{path}.{KEY}" in headings, \
                f"section {path} has no heading in the reference"
        else:
            assert path in rows, f"config field {path} is not in the reference"
            shown = re.sub(r"\\(.)", r"\1", rows[path]).replace("&lt;", "<")
            assert " ".join((field.description or "").split()[:2]) in " ".join(shown.split()), \
                f"{path}: the reference's row does not carry the model's description"
