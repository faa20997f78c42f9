"""MkDocs hook: the flow parameter reference (``reference/parameters.md``), generated from the
parameter models when the site is built, so a default or a description changed in code changes here."""

from __future__ import annotations

import json
import types
import typing
from importlib import import_module
from typing import Any

from pydantic import BaseModel

MARKER = "<!-- itm-parameters -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return markdown.replace(MARKER, parameter_reference()) if MARKER in markdown else markdown


def parameter_reference() -> str:
    from flows import FLOWS

    config = import_module("itm_core.config")
    nested: dict[str, type[BaseModel]] = {}
    parts = []
    for flow, (_, model_name) in FLOWS.items():
        model = getattr(config, model_name)
        parts.append(f"## {flow}\n\n`{model_name}`: {_summary(model)}\n\n{_table(model, nested)}")
    parts.append("## Settings inside the flows' parameters\n")
    done: set[str] = set()
    while len(done) < len(nested):
        for name in sorted(set(nested) - done):
            done.add(name)
            parts.append(f"### {name}\n\n{_summary(nested[name])}\n\n{_table(nested[name], nested)}")
    return "\n\n".join(parts)


def _summary(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _type(annotation: Any, nested: dict[str, type[BaseModel]]) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0], nested)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        nested.setdefault(annotation.__name__, annotation)
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a, nested) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    if origin in (list, tuple, set):
        return "list of " + (_type(args[0], nested) if args else "values")
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        shown = json.dumps(value.model_dump(mode="json", exclude_defaults=True))
        return f"`{shown}`" if shown != "{}" and len(shown) <= 60 else "its defaults"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "`" + json.dumps([v.model_dump(mode="json", exclude_defaults=True) for v in value]) + "`"
    return f"`{json.dumps(value, default=str)}`"


def _table(model: type[BaseModel], nested: dict[str, type[BaseModel]]) -> str:
    rows = ["| setting | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(field.annotation, nested)} | {_default(field)} | {description} |")
    return "\n".join(rows)
