"""The plugin contract: the hooks a plugin may implement.

Every hook is a registration hook. It is called once, when the component registry is first built,
and receives a ``register`` callback with the signature ``register(name, factory, **metadata)``:

- ``name``: the component's name, unique within its kind (``"cosine"``, ``"minilm"``);
- ``factory``: a callable that builds the component from keyword options
  (``itm_core.create(kind, name, **options)`` calls ``factory(**options)``);
- ``metadata``: JSON-serialisable facts shown by ``itm plugins`` (``modality``, ``dim``,
  ``description``, ``requires``...).

The hooks return nothing. The component interfaces live in :mod:`itm_core.contract.components`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("itm")
hookimpl = pluggy.HookimplMarker("itm")


class Register(Protocol):
    """The callback handed to every registration hook."""

    def __call__(self, name: str, factory: Callable[..., Any], **metadata: Any) -> None: ...


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders: factories of :class:`itm_core.contract.components.Encoder`.

    Metadata should include ``modality`` (``"image"`` or ``"text"``) and, when known without
    building the model, ``dim``.
    """


@hookspec
def register_similarities(register: Register) -> None:
    """Register similarity measures: factories of :class:`itm_core.contract.components.Similarity`."""


@hookspec
def register_fusions(register: Register) -> None:
    """Register fusion methods: factories of :class:`itm_core.contract.components.Fusion`."""


@hookspec
def register_generators(register: Register) -> None:
    """Register generators: factories of :class:`itm_core.contract.components.Generator`.

    Metadata should include ``task`` (``"image-to-text"`` or ``"text-to-image"``).
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register metrics: factories of :class:`itm_core.contract.components.Metric`.

    Metadata should include ``task`` (for example ``"retrieval"``) so flows can pick metrics.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: factories of :class:`itm_core.contract.components.Dataset`."""


@hookspec
def register_explainers(register: Register) -> None:
    """Register explainers: factories of :class:`itm_core.contract.components.Explainer`.

    Metadata should include ``modalities`` (``["image"]``, ``["text"]`` or both).
    """
