"""What every parameter model builds on: :class:`Params` refuses unknown keys, and
:class:`ComponentParams` names a registered component with its factory's options.

A field that names components says which kind with :func:`component` (a model that is one component,
such as a dataset's, says it with ``component_kind``); :func:`check_components` then
checks, before anything runs, that every name is registered and every option is one its factory
takes, and says which one was meant."""

from __future__ import annotations

import copy
import difflib
import json
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from itm_core.errors import OptionsError, ParamsError


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


class ParamsFileError(ParamsError):
    """A parameters file that cannot be read or does not validate; the message names the file and fields."""


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The mapping a JSON or YAML parameters file holds."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParamsFileError(f"cannot read parameters file {str(path)!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ParamsFileError(
            f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}"
        ) from None
    if data is not None and not isinstance(data, dict):
        raise ParamsFileError(f"{path}: expected a mapping of parameters, got {type(data).__name__}")
    return data or {}


def apply_setting(data: dict[str, Any], setting: str) -> dict[str, Any]:
    """``data`` with one ``--set key.path=value`` applied (in place): the value is read as YAML
    (``5``, ``true``, ``null``, ``[a, b]``, ``{name: clip}``; anything else stays a string), a
    number in the path indexes a list (``matchers.0.label=x``)."""
    key, sep, raw = setting.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ParamsError(f"--set expects KEY.PATH=VALUE (e.g. training.epochs=5), got {setting!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ParamsError(f"--set {key}: {where} indexes a list of {len(node)} items")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    item = parts[depth + 1]
                    if item.isdigit():
                        raise ParamsError(
                            f"--set {key}: {where} is not in the parameters given, so it has no item {item}; "
                            f"set the whole list (e.g. {where}=[...]) or give it in a --params file"
                        )
                    node[part] = {}
                node = node[part]
        else:
            raise ParamsError(f"--set {key}: {'.'.join(parts[:depth])} is {node!r}, not a mapping")
    return data


def params_from(
    model: type[Params],
    path: str | Path | None = None,
    settings: Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> Params:
    """``model`` from a parameters file (or ``base``, or the defaults) with ``--set`` settings on
    top, validated and its components checked; a mistake names its source and the setting."""
    data = copy.deepcopy(base or {}) if path is None else read_params_file(path)
    for setting in settings:
        apply_setting(data, setting)
    source = (
        " with ".join(x for x in (str(path) if path else "", " ".join(f"--set {s}" for s in settings)) if x)
        or "the defaults"
    )
    try:
        params = model.model_validate(data)
        check_components(params)
    except ValidationError as exc:
        raise ParamsFileError(f"{source}: invalid {model.__name__}: {problems(exc, model)}") from None
    except OptionsError as exc:
        raise ParamsFileError(f"{source}: invalid {model.__name__}: {exc}") from None
    return params


def load_params(path: str | Path, model: type[Params]) -> Params:
    """Read a JSON or YAML file and validate it against ``model``."""
    return params_from(model, path)


def run_values(params: BaseModel) -> dict[str, Any]:
    """``params`` as JSON values for a deployment run: every field but those left ``None`` where
    ``None`` is the default (the run form shows such fields as plain, optional fields; see
    ``itm_core.ops.forms``)."""

    def dump(value: Any) -> Any:
        if isinstance(value, BaseModel):
            fields = type(value).model_fields
            return {
                name: dump(getattr(value, name))
                for name in fields
                if not (getattr(value, name) is None and fields[name].default is None)
            }
        if isinstance(value, list | tuple):
            return [dump(v) for v in value]
        if isinstance(value, dict):
            return {k: dump(v) for k, v in value.items()}
        return value

    from pydantic_core import to_jsonable_python

    return dict(to_jsonable_python(dump(params)))
