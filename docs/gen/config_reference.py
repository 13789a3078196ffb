"""Write docs/reference/config.md from the pydantic models of ``fsnn.platform.config``.

Every field of ``Config`` and of its nested sections (``data``, ``method``, ..., ``search``,
``search.space.<key>``, ``search.resources``) is found by walking the models: its type, bounds
and default come from the model, its description from ``Field(description=...)`` (a field
without one is an error: platform/config.py is the only place descriptions are written; the
``model`` field's gets the model zoo's entries appended). Run by ``make docs``:

    python docs/gen/config_reference.py [--out docs/reference/config.md]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from _markdown import code, table, text
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "reference" / "config.md"
KEY = "<key>"  # stands for a mapping's key in a dotted path: search.space.<key>.choice

# Rules the models' validators enforce across fields (platform/config.py: Config._leak,
# _check_forward, MethodConfig._fields_of_the_method, SearchConfig._space, ParamSpace._one).
RULES = [
    "`leak` unset means 1.0 for `neuron: IF` and 0.95 for `neuron: LIF`; an IF neuron must "
    "have leak 1.0 and a LIF neuron a leak below 1.",
    "A field of another training method than `method.name` (for example `method.surrogate` "
    "with `method.name: ide`) is an error when it differs from its default.",
    "`forward` other than `engine` needs `method.name: ide` and `dropout: 0` "
    "(`fsnn train --forward SIM` sets the latter itself).",
    "`target_eval.every` > 0 needs backends: `target_eval.backends`, or a simulator `forward`.",
    "`search.space`: each entry gives exactly one distribution; `[low, high]` needs low < high "
    "(low ≤ high for `randint`); `grid` is refused with `algorithm: optuna`, continuous "
    "distributions with `algorithm: grid`; `leak` and `neuron` cannot both be sampled; every "
    "listed value (or both ends of a range) must give a valid config.",
    "`spide`: `method.backward_warmup` < `method.backward_T`.",
]

SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _literal_values(ann: Any) -> list[Any] | None:
    """The values of a Literal, or of a union made only of Literals; else None."""
    if get_origin(ann) is Literal:
        return list(get_args(ann))
    if get_origin(ann) in (Union, types.UnionType):
        values: list[Any] = []
        for a in get_args(ann):
            sub = _literal_values(a)
            if sub is None:
                return None
            values += sub
        return values
    return None


def type_text(ann: Any) -> str:
    """A field's annotation in words (Markdown)."""
    if ann is type(None) or ann is None:
        return "null"
    literals = _literal_values(ann)
    if literals is not None:
        return "one of " + ", ".join(code(json.dumps(v) if isinstance(v, bool) else str(v))
                                     for v in literals)
    origin, args = get_origin(ann), get_args(ann)
    if origin in (Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if origin is list:
        return f"list of ({type_text(args[0])})"
    if origin is tuple:
        return "\\[" + ", ".join(type_text(a) for a in args) + "\\]"
    if origin is dict:
        return f"mapping from ({type_text(args[0])}) to ({type_text(args[1])})"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "section"
    if ann in SCALARS:
        return SCALARS[ann]
    return code(getattr(ann, "__name__", str(ann)))


def bounds_text(field: FieldInfo) -> str:
    """The field's numeric bounds and length limits, e.g. ``> 0, ≤ 1``."""
    out = []
    for m in field.metadata:
        if isinstance(m, at.Gt):
            out.append(f"> {m.gt}")
        elif isinstance(m, at.Ge):
            out.append(f"≥ {m.ge}")
        elif isinstance(m, at.Lt):
            out.append(f"< {m.lt}")
        elif isinstance(m, at.Le):
            out.append(f"≤ {m.le}")
        elif isinstance(m, at.MinLen):
            out.append(f"at least {m.min_length} item{'s' if m.min_length != 1 else ''}")
    return ", ".join(out)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None \
        else field.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "(section)"
    return code(json.dumps(value))


def section_model(ann: Any) -> tuple[type[BaseModel], bool, bool] | None:
    """``(model, optional, mapping)`` when a field holds a section: a model, a model or null,
    or a mapping from keys to models; None for a leaf."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False, False
    origin, args = get_origin(ann), get_args(ann)
    if origin in (Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1 and type(None) in args:
            return models[0], True, False
    if origin is dict and len(args) == 2:
        inner = section_model(args[1])
        if inner is not None and not inner[1] and not inner[2]:
            return inner[0], False, True
    return None


@dataclass
class Section:
    path: str  # "" for the top level; "search.space.<key>" for a mapping's entries
    model: type[BaseModel]
    field: FieldInfo | None  # the parent's field holding this section
    optional: bool
    mapping: bool


def sections(model: type[BaseModel], path: str = "", field: FieldInfo | None = None,
             optional: bool = False, mapping: bool = False) -> list[Section]:
    """The model and every section below it, in field order."""
    out = [Section(path, model, field, optional, mapping)]
    for name, f in model.model_fields.items():
        found = section_model(f.annotation)
        if found is None:
            continue
        sub, opt, is_map = found
        child = f"{path}{'.' if path else ''}{name}" + (f".{KEY}" if is_map else "")
        out += sections(sub, child, f, opt, is_map)
    return out


def leaves(section: Section) -> list[tuple[str, FieldInfo]]:
    return [(f"{section.path}{'.' if section.path else ''}{name}", f)
            for name, f in section.model.model_fields.items()
            if section_model(f.annotation) is None]


def method_of(path: str) -> str | None:
    """The training method a ``method.*`` field belongs to (None: every method)."""
    from fsnn.platform.config import _METHOD_FIELDS

    if not path.startswith("method."):
        return None
    name = path.removeprefix("method.")
    return next((m for m, fields in _METHOD_FIELDS.items() if name in fields), None)


def descriptions(all_sections: list[Section]) -> dict[str, str]:
    """Every leaf's description, from its model's ``Field(description=...)``."""
    out: dict[str, str] = {}
    for s in all_sections:
        for path, f in leaves(s):
            if not f.description:
                raise SystemExit(f"config_reference: {path} has no description; give it "
                                 "Field(description=...) in platform/config.py")
            out[path] = f.description
    if "model" in out:  # the zoo's entries, which platform/config.py does not import
        from fsnn.platform.zoo import ZOO

        zoo = "; ".join(f"`{name}` ({entry.description})" for name, entry in ZOO.items())
        out["model"] = f"{out['model']}: {zoo}"
    return out


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__
    if not doc or doc == BaseModel.__doc__:
        return ""
    return text(inspect.cleandoc(doc))


def render(config: type[BaseModel]) -> str:
    all_sections = sections(config)
    desc = descriptions(all_sections)
    lines = ["# Configuration", "",
             "<!-- Generated by docs/gen/config_reference.py from fsnn.platform.config; "
             "do not edit. -->", "",
             "Generated from the pydantic models in `platform/config.py` (`Config` and its "
             "sections). A config is a YAML file; `--set KEY=VALUE` sets any field by its "
             "dotted path (the value is read as YAML, e.g. `--set optim.milestones=[30,60]`). "
             "Every field has a default unless marked *required*; an unknown field, a value of "
             "the wrong type or out of bounds, and any infinite or NaN number are refused "
             "before anything runs, naming the field. In a path, `<key>` stands for a key of "
             "a mapping (in `search.space`: the dotted config path being searched).", "",
             "Sections:", ""]
    for s in all_sections:
        lines.append(f"- [{_title(s)}](#{_anchor(s)})")
    for s in all_sections:
        lines += ["", f"## {_title(s)} {{#{_anchor(s)}}}", ""]
        intro = []
        if s.field is not None and s.field.description:
            intro.append(text(s.field.description[:1].upper() + s.field.description[1:]) + ".")
        if s.optional:
            intro.append("Optional: unset (`null`) by default.")
        if s.mapping:
            intro.append(f"A mapping: each key (`{KEY}`) holds a section of these fields.")
        doc = _doc(s.model)
        if doc:
            intro.append(doc)
        lines += [" ".join(intro), ""] if intro else []
        rows = []
        for path, f in leaves(s):
            kind = type_text(f.annotation)
            bounds = bounds_text(f)
            method = method_of(path)
            about = text(desc[path])
            if method is not None:
                about = f"(method `{method}`) {about}"
            rows.append([code(path), kind + (f"; {bounds}" if bounds else ""),
                         default_text(f), about])
        if rows:
            lines += table(["field", "type", "default", "description"], rows)
    lines += ["", "## Rules across fields {#rules}", "",
              "Checked when the config is loaded, like the bounds above:", ""]
    lines += [f"- {rule}" for rule in RULES]
    return "\n".join(lines).rstrip("\n") + "\n"


def _title(s: Section) -> str:
    return f"`{s.path}`" if s.path else "Top level"


def _anchor(s: Section) -> str:
    if not s.path:
        return "top-level"
    return "section-" + s.path.replace(".", "-").replace(KEY, "key")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the config reference from its models.")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to write")
    args = ap.parse_args(argv)
    from fsnn.platform.config import Config

    page = render(Config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
