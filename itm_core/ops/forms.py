"""Prefect run forms with the registered plugins as choices.

A flow's parameter schema comes from its pydantic model, where a component is a free-form name.
:func:`with_plugin_choices` rewrites the schema of a deployment so that each name field lists the
registered components of the right kind (image encoders for ``image_encoder``, generators for
``generator``...), which the Prefect UI shows as a drop-down. Validation still happens in the flow.
"""

from __future__ import annotations

import copy
from typing import Any

# field name -> (kind, modality or generator task) of the component it names
COMPONENT_FIELDS: dict[str, tuple[str, str | None]] = {
    "image_encoder": ("encoder", "image"),
    "text_encoder": ("encoder", "text"),
    "metrics": ("metric", None),
    "dataset": ("dataset", None),
    "explainers": ("explainer", None),
    "captioners": ("generator", "image-to-text"),
}
NAME_FIELDS: dict[str, str] = {"generator": "generator", "similarity": "similarity", "fusions": "fusion"}


def component_names(kind: str, modality: str | None = None) -> list[str]:
    from itm_core.contract.registry import collect

    specs = collect().get(kind, {})
    return sorted(
        n
        for n, s in specs.items()
        if modality is None or modality in str(s.metadata.get("modality", s.metadata.get("task", ""))).split("|")
    )


def _def_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _retarget(prop: dict[str, Any], old: str, new: str) -> None:
    """Point every ``$ref`` to definition ``old`` inside ``prop`` at ``new``."""
    if prop.get("$ref", "").endswith(f"/{old}"):
        prop["$ref"] = prop["$ref"][: -len(old)] + new
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in prop.get(key, []):
            _retarget(sub, old, new)
    if isinstance(prop.get("items"), dict):
        _retarget(prop["items"], old, new)


def _refs(prop: dict[str, Any]) -> list[str]:
    found = [_def_name(prop["$ref"])] if "$ref" in prop else []
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in prop.get(key, []):
            found += _refs(sub)
    if isinstance(prop.get("items"), dict):
        found += _refs(prop["items"])
    return found


def without_null_choice(node: Any) -> Any:
    """Each optional field whose default is ``None`` (``anyOf: [X, {type: null}]``) as plain ``X``
    with no default: the Prefect form then shows an empty ``X`` field, which it leaves out of the
    run's parameters when left empty (so the default applies), instead of a type switch set to
    "None" that reads "Property is type 'None'". Fields with another default keep their choice."""
    if isinstance(node, list):
        return [without_null_choice(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: without_null_choice(value) for key, value in node.items()}
    choices = node.get("anyOf")
    if isinstance(choices, list) and len(choices) == 2 and node.get("default") is None:
        kept = [c for c in choices if c != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            return {**kept[0], **rest}
    return node


def with_plugin_choices(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Prefect parameter schema (``properties`` + ``definitions``) with plugin choices,
    and optional fields shown as fields (:func:`without_null_choice`)."""
    schema = without_null_choice(copy.deepcopy(schema))
    definitions: dict[str, Any] = schema.setdefault("definitions", {})
    for model in list(definitions.values()):
        for field, prop in model.get("properties", {}).items():
            if field in NAME_FIELDS:
                names = component_names(NAME_FIELDS[field])
                target = prop["items"] if prop.get("type") == "array" else prop
                if names and target.get("type") == "string":
                    target["enum"] = names
            if field not in COMPONENT_FIELDS:
                continue
            kind, modality = COMPONENT_FIELDS[field]
            names = component_names(kind, modality)
            for ref in _refs(prop):
                if not names or ref not in definitions:
                    continue
                label = f"{ref}_{field}"
                choice = definitions.setdefault(label, copy.deepcopy(definitions[ref]))
                choice["title"] = f"{definitions[ref].get('title', ref)} ({field.replace('_', ' ')})"
                choice["properties"]["name"]["enum"] = names
                _retarget(prop, ref, label)
    return schema
