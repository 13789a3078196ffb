"""The documentation site: both generated references are complete, and `mkdocs build --strict`
passes (every nav page present, no broken link or anchor), as `make docs` builds it.

The site is built from a copy of docs/ and mkdocs.yml in a temporary folder, so the test
leaves the checkout as it was. The commands and config fields the references must name are
found here by walking the parser and the models independently of the generators.
"""

from __future__ import annotations

import argparse
import json
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from docsite import GENERATED
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def built(docs_site: Path) -> Path:
    """A copy of the docs with freshly generated references, built strictly into site/."""
    return docs_site


def _nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    if isinstance(nav, dict):
        return [p for item in nav.values() for p in _nav_pages(item)]
    return []


def test_the_site_builds_strictly_with_every_nav_page(built: Path) -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = _nav_pages(nav)
    assert set(GENERATED) <= set(pages)
    for page in pages:
        html = "index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html"
        assert (built / "site" / html).is_file(), page


# -- the command line ----------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
              ) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    found = {words: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(_commands(child, (*words, name)))
    return found


def _sections(page: str) -> dict[str, str]:
    """Each `## `/`### ` heading's title (backticks removed, attributes dropped) -> its text."""
    parts = re.split(r"^#{2,3} (.+)$", page, flags=re.MULTILINE)
    return {re.sub(r"\s*\{#[^}]*\}$", "", title).strip("` "): body
            for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_the_cli_reference_names_every_command_and_argument(built: Path) -> None:
    from fsnn.pipelines.cli import build_parser

    sections = _sections((built / "docs" / "reference" / "cli.md").read_text())
    commands = _commands(build_parser())
    assert ("data", "fetch") in commands and ("data", "verify") in commands
    for words, parser in commands.items():
        name = " ".join(("fsnn", *words))
        assert name in sections, f"{name} has no section"
        body = sections[name]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            names = action.option_strings or [action.metavar or action.dest]
            for option in names:
                assert f"`{option}" in body, f"{name}: {option} is not documented"
    assert len(sections) == len(commands), sorted(set(sections) - {
        " ".join(("fsnn", *w)) for w in commands})


# -- the configuration ---------------------------------------------------------------------------


def _model_in(ann: Any) -> tuple[type[BaseModel], bool] | None:
    """The section model a field holds (and whether through a mapping), or None for a leaf."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False
    origin, args = get_origin(ann), get_args(ann)
    if origin in (Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if models:
            return models[0], False
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], True
    return None


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        inner = _model_in(field.annotation)
        if inner is None:
            out[prefix + name] = field
        else:
            sub, mapping = inner
            out.update(_leaves(sub, f"{prefix}{name}.{'<key>.' if mapping else ''}"))
    return out


def test_the_config_reference_names_every_field_with_its_default(built: Path) -> None:
    from fsnn.platform.config import Config

    page = (built / "docs" / "reference" / "config.md").read_text()
    rows = {line.split(" | ")[0].removeprefix("| ").strip("`"): line
            for line in page.splitlines() if line.startswith("| `")}
    leaves = _leaves(Config)
    assert "search.space.<key>.loguniform" in leaves and "target_eval.every" in leaves
    for path, field in leaves.items():
        assert path in rows, f"config field {path} is not documented"
        cells = rows[path].removesuffix(" |").split(" | ")
        assert cells[-1].strip(), f"{path}: no description"
        if field.is_required():
            assert "required" in rows[path], path
        else:
            default = field.default_factory() if field.default_factory is not None \
                else field.default  # type: ignore[call-arg]
            assert f"`{json.dumps(default)}`" in rows[path], (path, default)
    assert set(rows) == set(leaves), sorted(set(rows) - set(leaves))


# -- the results page ----------------------------------------------------------------------------


def test_the_results_tables_are_the_readmes() -> None:
    """docs/results.md holds every measurement; README's short table copies rows of it: each
    README row must stand on the results page as is."""
    results = (ROOT / "docs" / "results.md").read_text().splitlines()
    assert len([line for line in results if line.startswith("|")]) > 20
    rows = [line for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith("| ")]
    assert len(rows) >= 5
    missing = [row for row in rows if row not in results]
    assert not missing, "README rows that docs/results.md does not have (copy them again):\n" \
        + "\n".join(missing)
