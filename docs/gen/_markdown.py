"""Markdown helpers shared by the reference generators (no fsnn imports)."""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\*_\[\]>|#])")


def text(s: str) -> str:
    """Prose for a Markdown table cell or paragraph: whitespace collapsed and Markdown's special
    characters escaped outside `code spans` (``<`` as an entity: it would open raw HTML).
    Python-Markdown's tables do not split a row at a pipe inside a code span."""
    parts = " ".join(s.split()).replace("``", "`").split("`")
    unpaired = parts.pop() if len(parts) % 2 == 0 else None  # an odd number of backticks
    out = [f"`{part}`" if i % 2 else _prose(part) for i, part in enumerate(parts)]
    if unpaired is not None:
        out.append("\\`" + _prose(unpaired))
    return "".join(out)


def _prose(s: str) -> str:
    return _SPECIAL.sub(r"\\\1", s).replace("<", "&lt;")


def code(s: str) -> str:
    """``s`` as a code span safe inside a table cell."""
    fence = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A pipe table (cells already Markdown)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return lines
