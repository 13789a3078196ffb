"""The Python API reference (docs/reference/api.md, rendered by mkdocstrings): every public name
of ``fsnn`` and ``fsnn.backends`` has its entry, with its docstring, and the site builds
strictly the way `make docs` builds it.

mkdocstrings reads the package from build/pkgtree (mkdocs.yml: ``paths: [build/pkgtree]``), the
link tree `make docs` lays out. The site is built here from a copy of docs/ and mkdocs.yml in a
temporary folder holding its own such tree, so the test leaves the checkout as it was.
"""

from __future__ import annotations

import html
import inspect
import re
from pathlib import Path

import pytest

import fsnn
import fsnn.backends
import fsnn.jobs

ROOT = Path(__file__).resolve().parents[1]
# names of fsnn rendered under another path (the module that defines them)
SPEC = ("Network", "load_spec", "save_spec")
MODULES = ("backends", "zoo")


@pytest.fixture(scope="module")
def page(docs_site: Path) -> str:
    """The built API page as HTML."""
    return (docs_site / "site" / "reference" / "api" / "index.html").read_text()


def _text(page: str) -> str:
    """The page's text, tags removed and white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _summary(obj: object) -> str:
    """The first sentence of a docstring, as the page shows it (markup removed)."""
    doc = inspect.getdoc(obj) or ""
    first = " ".join(doc.split("\n\n")[0].split()).split(";")[0].split(". ")[0]
    return re.sub(r":\w+:|`", "", first).replace("~", "")[:60]


def test_every_public_name_has_an_entry(page: str) -> None:
    ids = set(re.findall(r'id="([^"]+)"', page))
    for name in fsnn.__all__:
        if name in MODULES:
            continue
        where = f"fsnn.platform.spec.{name}" if name in SPEC else f"fsnn.{name}"
        assert where in ids, f"{name} has no entry ({where}) in docs/reference/api.md"
    for name in fsnn.backends.__all__:
        assert f"fsnn.backends.{name}" in ids, f"fsnn.backends.{name} has no entry"
    assert "fsnn.platform.zoo.build_model" in ids


def test_the_entries_show_their_docstrings(page: str) -> None:
    text = _text(page)
    # markup leaves spaces around code spans; Sphinx roles (:func:`x`) are shown as written
    squeezed = re.sub(r"\s|:\w+:|~", "", text)
    documented = [getattr(fsnn, n) for n in fsnn.jobs.__all__
                  if n not in ("ConfigSource", "FsnnError")]
    documented += [fsnn.load_spec, fsnn.save_spec, fsnn.backends.get, fsnn.backends.names,
                   fsnn.TuneResult, fsnn.FsnnError, fsnn.Interrupted]
    for obj in documented:
        summary = _summary(obj)
        assert len(summary) > 15, obj
        assert re.sub(r"\s", "", summary) in squeezed, \
            f"{obj.__name__}: {summary!r} is not on the page"
    # signatures are rendered with their parameters
    assert "tracking_uri" in text and "num_workers" in text and "samples" in text
