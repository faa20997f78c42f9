"""What every parameter model builds on: :class:`Params` refuses unknown keys, and
:class:`ComponentParams` names a registered component with its factory's options."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Params(BaseModel):
    """A parameter model: an unknown key is an error that names it, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")


class ComponentParams(Params):
    name: str = Field(description="Registered component name")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options for the component's factory")


def problems(exc: ValidationError) -> str:
    """Each validation error as ``field.path: message``, joined by semicolons."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
