"""What runs with nobody running it: the triggers and schedules of ``prefect.yaml``.

Each deployment of ``prefect.yaml`` may list ``triggers`` (Prefect's deployment triggers: run the
deployment when an event arrives) and ``schedules`` (``cron`` or ``interval`` seconds), each with a
``name`` and ``enabled`` (triggers) or ``active`` (schedules) as shipped. ``itm up`` serves them with
the deployments. ``itm automations on|off NAME`` switches one: at once on the running stack, and
for every later ``itm up`` (the choice is kept in ``$ITM_HOME/automations.json``, which wins over
``prefect.yaml``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itm_core.errors import ParamsError
from itm_core.home import itm_home


@dataclass(frozen=True)
class Automation:
    name: str
    kind: str  # "trigger" or "schedule"
    deployment: str  # FLOW/DEPLOYMENT it runs
    when: str  # the events it expects, or the schedule
    shipped: bool  # on as prefect.yaml ships it
    description: str = ""


def switches_file() -> Path:
    return itm_home() / "automations.json"


def switches() -> dict[str, bool]:
    """The user's choices (``itm automations on|off``), by automation name."""
    path = switches_file()
    return {str(k): bool(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def declared(specs: list[dict[str, Any]]) -> list[Automation]:
    """Every trigger and schedule of the deployments ``specs``; each needs a name, unique across them."""
    found: list[Automation] = []
    for spec in specs:
        for trigger in spec.get("triggers") or []:
            found.append(
                Automation(
                    _named(trigger, spec),
                    "trigger",
                    _deployment(spec),
                    "on " + ", ".join(trigger.get("expect") or []),
                    bool(trigger.get("enabled", True)),
                    trigger.get("description", ""),
                )
            )
        for schedule in spec.get("schedules") or []:
            when = f"cron {schedule['cron']}" if "cron" in schedule else f"every {schedule.get('interval')} s"
            found.append(
                Automation(
                    _named(schedule, spec),
                    "schedule",
                    _deployment(spec),
                    when,
                    bool(schedule.get("active", True)),
                    schedule.get("description", ""),
                )
            )
    names = [a.name for a in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ParamsError(f"prefect.yaml: automation names must be unique; used more than once: {', '.join(twice)}")
    return found


def _deployment(spec: dict[str, Any]) -> str:
    """``flow/deployment``; a flow is named as its function, with dashes (``watch_data``: ``watch-data``)."""
    return f"{spec['entrypoint'].rsplit(':', 1)[-1].replace('_', '-')}/{spec['name']}"


def _named(item: dict[str, Any], spec: dict[str, Any]) -> str:
    name = item.get("name") or item.get("slug")
    if not name:
        raise ParamsError(f"prefect.yaml: every trigger and schedule of {spec['entrypoint']} needs a name")
    return str(name)


def is_on(automation: Automation, chosen: dict[str, bool] | None = None) -> bool:
    chosen = switches() if chosen is None else chosen
    return chosen.get(automation.name, automation.shipped)


def find(name: str, specs: list[dict[str, Any]]) -> Automation:
    known = {a.name: a for a in declared(specs)}
    if name not in known:
        raise ParamsError(f"no automation named {name!r}; the automations are: {', '.join(known) or 'none'}")
    return known[name]


def record(name: str, on: bool) -> None:
    chosen = switches()
    chosen[name] = on
    switches_file().parent.mkdir(parents=True, exist_ok=True)
    switches_file().write_text(json.dumps(chosen, indent=2, sort_keys=True))


def triggers_of(spec: dict[str, Any]) -> list[Any]:
    """The deployment's triggers as Prefect objects, switched as the user chose."""
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    chosen, adapter = switches(), TypeAdapter(DeploymentTriggerTypes)
    triggers = []
    for item in spec.get("triggers") or []:
        fields = {k: v for k, v in item.items() if k != "enabled"}
        name = _named(item, spec)
        triggers.append(adapter.validate_python({**fields, "enabled": chosen.get(name, item.get("enabled", True))}))
    return triggers


def schedules_of(spec: dict[str, Any]) -> list[Any]:
    """The deployment's schedules as Prefect objects (each with its name as slug), switched as the user chose."""
    from prefect.schedules import Cron, Interval

    chosen, schedules = switches(), []
    for item in spec.get("schedules") or []:
        name = _named(item, spec)
        active = chosen.get(name, bool(item.get("active", True)))
        timezone = item.get("timezone")
        if "cron" in item:
            schedules.append(Cron(item["cron"], timezone=timezone, active=active, slug=name))
        elif "interval" in item:
            schedules.append(Interval(float(item["interval"]), timezone=timezone, active=active, slug=name))
        else:
            raise ParamsError(f"prefect.yaml: schedule {name!r} needs a cron or an interval (seconds)")
    return schedules


def switch_live(automation: Automation, on: bool) -> bool:
    """Switch ``automation`` on the Prefect server this process uses; False when it is not there
    (the stack is down, or serves another prefect.yaml): the next ``itm up`` applies the choice."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if automation.kind == "trigger":
            found = client.read_automations_by_name(automation.name)
            for item in found:
                (client.resume_automation if on else client.pause_automation)(item.id)
            return bool(found)
        for deployment in client.read_deployments():
            for schedule in deployment.schedules:
                if schedule.slug == automation.name:
                    client.update_deployment_schedule(deployment.id, schedule.id, active=on)
                    return True
    return False
