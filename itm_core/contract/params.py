"""What every parameter model builds on: :class:`Params` refuses unknown keys, and
:class:`ComponentParams` names a registered component with its factory's options.

A field that names components says which kind with :func:`component` (a model that is one component,
such as a dataset's, says it with ``component_kind``); :func:`check_components` then
checks, before anything runs, that every name is registered and every option is one its factory
takes, and says which one was meant."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from itm_core.errors import OptionsError


class Params(BaseModel):
    """A parameter model: an unknown key is an error that names it, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")


class ComponentParams(Params):
    name: str = Field(description="Registered component name")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options for the component's factory")


def component(kind: str, *, names: Sequence[str] = (), name_field: str | None = None, by_name: bool = False) -> Any:
    """``json_schema_extra`` of a field that names ``kind`` components. The field holds one of:
    a :class:`ComponentParams` or a name (or a list of them);
    options for the components ``names``; options for the component the sibling ``name_field``
    names; or, with ``by_name``, a mapping of component name to its options."""
    return {"component": {"kind": kind, "names": list(names), "name_field": name_field, "by_name": by_name}}


def _named(kind: str, name: str, options: Any, name_at: str, options_at: str) -> None:
    from itm_core.contract.registry import RegistryError, spec

    try:
        found = spec(kind, name)
    except RegistryError as exc:
        raise OptionsError(f"{name_at}: {exc}") from None
    if isinstance(options, dict):
        found.refuse_unknown(options, options_at)


def _uses(model: BaseModel) -> Iterator[tuple[str, Any, dict[str, Any] | None]]:
    """Each field of ``model``: its name, its value and its component marker (if any)."""
    for field_name, info in type(model).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        yield field_name, getattr(model, field_name), extra.get("component")  # type: ignore[misc]


def check_components(model: BaseModel, where: str = "") -> None:
    """Raise :class:`OptionsError` for the first component of ``model`` (at any depth) whose name is not
    registered or whose options its factory does not take; the message names the parameter's path."""
    for field_name, value, marker in _uses(model):
        path = f"{where}.{field_name}" if where else field_name
        if marker is not None and value is not None:
            kind = marker["kind"]
            if marker["by_name"]:
                for name, options in value.items():
                    _named(kind, name, options, path, f"{path}.{name}")
            elif marker["name_field"]:
                name_at = f"{where}.{marker['name_field']}" if where else marker["name_field"]
                _named(kind, getattr(model, marker["name_field"]), value, name_at, path)
            elif marker["names"]:
                for name in marker["names"]:
                    _named(kind, name, value, path, path)
            else:
                items = value if isinstance(value, list) else [value]
                for n, item in enumerate(items):
                    at = f"{path}[{n}]" if isinstance(value, list) else path
                    if isinstance(item, str):
                        _named(kind, item, None, at, at)
                    else:
                        _named(kind, item.name, item.options, f"{at}.name", f"{at}.options")
            continue
        for n, item in enumerate(value if isinstance(value, list) else [value]):
            own_kind = getattr(type(item), "component_kind", None)
            if own_kind is not None:  # a model that is itself a component's name and options (a dataset)
                _named(own_kind, item.name, item.options, f"{path}.name", f"{path}.options")
            elif isinstance(item, BaseModel):
                check_components(item, f"{path}[{n}]" if isinstance(value, list) else path)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through ``Optional``, lists and unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The field names a key at ``loc`` (pydantic's error location, without the key) could have meant."""
    models = [model]
    for part in loc:
        if not isinstance(part, str):
            continue
        inner = [
            m for found in models if part in found.model_fields for m in _models_in(found.model_fields[part].annotation)
        ]
        if not inner:  # a tagged union's tag: the member whose discriminator defaults to it
            inner = [m for m in models if any(f.default == part for f in m.model_fields.values())]
        if not inner:
            return []
        models = inner
    return sorted({f for m in models for f in m.model_fields})


def problems(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """Each validation error as ``field.path: message``, joined by semicolons. With ``model``, an
    unknown key also lists the keys accepted there and the closest one."""
    out = []
    for e in exc.errors():
        where = ".".join(map(str, e["loc"])) or "(top level)"
        message = e["msg"]
        if e["type"] == "extra_forbidden" and model is not None:
            accepted = _fields_at(model, e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), accepted, n=1)
            message = "unknown setting" + (f"; did you mean {close[0]!r}?" if close else "")
            if accepted:
                message += f" (accepted here: {', '.join(accepted)})"
        out.append(f"{where}: {message}")
    return "; ".join(out)
