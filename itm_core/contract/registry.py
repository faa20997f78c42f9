"""Resolve components by kind and name from what the loaded plugins registered."""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from itm_core.contract.components import KINDS, Checked
from itm_core.contract.plugins import get_plugin_manager
from itm_core.errors import OptionsError, PluginError, UserError

HOOK_OF_KIND = {
    "encoder": "register_encoders",
    "similarity": "register_similarities",
    "fusion": "register_fusions",
    "generator": "register_generators",
    "metric": "register_metrics",
    "dataset": "register_datasets",
    "explainer": "register_explainers",
}


class RegistryError(PluginError, LookupError):
    """An unknown kind or name, or two plugins claiming the same component name."""


@dataclass
class ComponentSpec:
    """One registered component: how to build it and what it says about itself."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """The distributions named in ``metadata["requires"]`` that are not installed.

        ``"a|b"`` is satisfied by either distribution; the first is the one to install.
        """
        absent = []
        for requirement in self.metadata.get("requires", []):
            choices = requirement.split("|")
            if not any(_installed(c) for c in choices):
                absent.append(choices[0])
        return absent

    def check_options(self, folder: Any) -> dict[str, Any]:
        """The options the conformance kit builds this component with when the user gives none: the
        ``check_options`` metadata, a dict or a function of a scratch folder returning one."""
        declared = self.metadata.get("check_options") or {}
        return dict(declared(folder) if callable(declared) else declared)

    def accepted(self) -> list[str] | None:
        """The keyword options the factory takes: its named parameters, and, when it takes ``**options``,
        those its registration lists (``options=[...]``); ``None`` when that cannot be known."""
        try:
            params = inspect.signature(self.factory).parameters.values()
        except (TypeError, ValueError):
            return None
        named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            declared = self.metadata.get("options")
            if not declared:
                return None
            named += [o for o in declared if o not in named]
        return named

    def refuse_unknown(self, options: Iterable[str], where: str) -> None:
        """Raise :class:`OptionsError` for the first of ``options`` the factory does not take: the
        message names ``where`` (the parameter's path), the component, the accepted options and the
        closest one."""
        accepted = self.accepted()
        if accepted is None:
            return
        for option in options:
            if option not in accepted:
                close = difflib.get_close_matches(option, accepted, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                takes = ", ".join(accepted) or "none"
                raise OptionsError(
                    f"{where}: {self.kind} {self.name!r} has no option {option!r} (it takes: {takes}){hint}"
                )

    def describe(self) -> dict[str, Any]:
        """Metadata for listings, with availability: a missing dependency comes with its install command."""
        out = {"kind": self.kind, "name": self.name, **{k: v for k, v in self.metadata.items() if k != "check_options"}}
        missing = self.missing()
        out["available"] = not missing
        if missing:
            out["install"] = "pip install " + " ".join(missing)
        return out


def _installed(distribution: str) -> bool:
    try:
        md.distribution(distribution)
    except md.PackageNotFoundError:
        return False
    return True


def collect() -> dict[str, dict[str, ComponentSpec]]:
    """Call every plugin's registration hooks; return ``{kind: {name: spec}}``.

    Two plugins registering one name of one kind is an error naming both.
    """
    pm = get_plugin_manager()
    found: dict[str, dict[str, ComponentSpec]] = {k: {} for k in KINDS}
    for kind, hook_name in HOOK_OF_KIND.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():

            def register(
                name: str,
                factory: Callable[..., Any],
                _plugin: str = impl.plugin_name,
                _kind: str = kind,
                **metadata: Any,
            ) -> None:
                if not isinstance(name, str) or not name:
                    raise RegistryError(f"plugin {_plugin!r} registered a {_kind} with an invalid name {name!r}")
                if not callable(factory):
                    raise RegistryError(
                        f"plugin {_plugin!r} registered {_kind} {name!r} with a factory that is not callable"
                    )
                previous = found[_kind].get(name)
                if previous is not None:
                    raise RegistryError(
                        f"{_kind} {name!r} is registered twice: by plugin {previous.plugin!r} and by plugin "
                        f"{_plugin!r}; "
                        f"disable one with ITM_DISABLE_PLUGINS"
                    )
                found[_kind][name] = ComponentSpec(_kind, name, factory, _plugin, metadata)

            impl.function(register=register)
    return found


def spec(kind: str, name: str) -> ComponentSpec:
    """The registered spec for ``kind``/``name``; unknown names fail with the known ones."""
    if kind not in KINDS:
        raise RegistryError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
    known = collect()[kind]
    if name not in known:
        names = ", ".join(sorted(known)) or "(none registered)"
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown {kind} {name!r}. Known {kind}s: {names}.{hint}")
    return known[name]


def names(kind: str) -> list[str]:
    """Names of the registered components of ``kind``."""
    if kind not in KINDS:
        raise RegistryError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
    return sorted(collect()[kind])


def available(kind: str, name: str) -> Any:
    """The spec of the component ``kind``/``name``, checked to be installed with what it needs."""
    s = spec(kind, name)
    missing = s.missing()
    if missing:
        raise RegistryError(
            f"{kind} {name!r} (plugin {s.plugin!r}) needs {', '.join(missing)}, which is not installed: "
            f"pip install {' '.join(missing)}"
        )
    return s


def create(kind: str, name: str, **options: Any) -> Any:
    """Build the component ``kind``/``name`` from keyword ``options``, wrapped in its contract checks."""
    s = available(kind, name)
    try:
        component = s.factory(**options)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:  # what a factory raises for options it refuses
        raise OptionsError(f"{kind} {name!r} (plugin {s.plugin!r}) rejected options {sorted(options)}: {exc}") from exc
    return Checked(component, kind, name, s.plugin, options)


def create_encoder(spec: dict[str, Any], state: Any = None) -> Any:
    """The encoder a saved spec (``{"name", "options"}``) names, with its fitted ``state`` when there is one."""
    encoder = create("encoder", spec["name"], **spec.get("options", {}))
    if state is not None:
        encoder.set_state(state)
    return encoder
