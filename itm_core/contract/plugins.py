"""The plugin manager: built-in and third-party plugins, all loaded from the ``itm`` entry points.

Built-in plugins are entry points of this distribution and load exactly like third-party ones.
``ITM_PLUGINS=a,b`` loads only those external plugins (built-ins always load);
``ITM_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name, built-in or not.
A plugin that fails to import or to validate is reported and skipped; the others keep working.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pluggy

from itm_core.contract import hookspecs
from itm_core.errors import PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "itm"
DISTRIBUTION = "itm-workbench"


@dataclass
class PluginInfo:
    """What the manager knows about one plugin: where it came from and whether it loaded."""

    name: str
    version: str | None = None
    distribution: str | None = None
    builtin: bool = False
    error: str | None = None
    hooks: list[str] = field(default_factory=list)


class ItmPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers each plugin's origin and the plugins that failed."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}

    def register_plugin(self, plugin: object, info: PluginInfo) -> bool:
        """Register ``plugin`` under ``info.name``; on a contract violation record it and skip it."""
        try:
            self.register(plugin, name=info.name)
            self.check_pending()
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.is_registered(plugin):
                self.unregister(plugin)
            info.error = f"{type(exc).__name__}: {exc}"
            log.warning("itm plugin %r was skipped: %s", info.name, info.error)
            self.info[info.name] = info
            return False
        info.hooks = sorted(c.name for c in self.get_hookcallers(plugin) or [])
        self.info[info.name] = info
        return True

    def unregister_plugin(self, name: str) -> None:
        self.unregister(name=name)
        self.info.pop(name, None)

    def failed(self) -> list[PluginInfo]:
        return [i for i in self.info.values() if i.error]


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def load_entry_points(pm: ItmPluginManager) -> None:
    """Import every ``itm`` entry point allowed by ``ITM_PLUGINS`` / ``ITM_DISABLE_PLUGINS``."""
    allowed = _names("ITM_PLUGINS")
    blocked = _names("ITM_DISABLE_PLUGINS") or set()
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else None
        builtin = _is_builtin(dist)
        info = PluginInfo(
            name=ep.name,
            version=ep.dist.version if ep.dist else None,
            distribution=dist,
            builtin=builtin,
        )
        if ep.name in blocked or (not builtin and allowed is not None and ep.name not in allowed):
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
            log.warning("itm plugin %r was skipped: %s", ep.name, info.error)
            pm.info[ep.name] = info
            continue
        pm.register_plugin(module, info)


def _is_builtin(dist: str | None) -> bool:
    return dist is not None and dist.replace("_", "-").lower() == DISTRIBUTION


_pm: ItmPluginManager | None = None


def get_plugin_manager() -> ItmPluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    global _pm
    if _pm is None:
        _pm = ItmPluginManager()
        load_entry_points(_pm)
    return _pm


def reset_plugin_manager() -> None:
    """Forget the loaded plugins so the next use reads the environment and entry points again."""
    global _pm
    _pm = None


@contextlib.contextmanager
def temporary_plugin(plugin: object, name: str) -> Iterator[PluginInfo]:
    """Register ``plugin`` for the duration of a ``with`` block (tests, notebooks)."""
    pm = get_plugin_manager()
    info = PluginInfo(name=name, version=None, distribution=None)
    if not pm.register_plugin(plugin, info):
        raise PluginError(f"plugin {name!r} does not follow the itm contract: {info.error}")
    try:
        yield info
    finally:
        pm.unregister_plugin(name)
