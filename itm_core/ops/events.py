"""Prefect events the flows emit: what happened between runs, for the Event Feed and for the
automations of ``prefect.yaml`` to act on. Each event's resource carries ``itm.*`` labels to filter
on; Prefect adds the flow run that emitted it as a related resource.

| event | resource | labels |
|---|---|---|
| ``itm.model.registered`` | ``itm.model.<name>.<version>`` | name, version, run id, metric, decision |
| ``itm.model.promoted`` | ``itm.model.<name>.<version>`` | name, version, run id, metric, previous champion |
| ``itm.index.built`` | ``itm.index.<run id>`` | run id, matcher, dataset, search model version |
| ``itm.dataset.changed`` | ``itm.dataset.<name>`` | name, source, fingerprint, previous fingerprint, flow |
"""

from __future__ import annotations

import os
from typing import Any

MODEL_REGISTERED = "itm.model.registered"
MODEL_PROMOTED = "itm.model.promoted"
INDEX_BUILT = "itm.index.built"
DATASET_CHANGED = "itm.dataset.changed"


def emit(event: str, resource_id: str, labels: dict[str, Any], payload: dict[str, Any] | None = None) -> bool:
    """Emit ``event`` about ``resource_id`` with string ``labels`` (``None`` values left out); False
    when no Prefect API takes events: outside a flow run with no server configured (where Prefect
    would start a temporary server for one event)."""
    from prefect.events import emit_event
    from prefect.runtime import flow_run

    if not flow_run.id and not os.environ.get("PREFECT_API_URL"):
        return False

    resource = {"prefect.resource.id": resource_id, **{k: str(v) for k, v in labels.items() if v is not None}}
    return emit_event(event=event, resource=resource, payload=payload) is not None


def model_registered(name: str, version: str, run_id: str, metric: str, decision: Any, previous: str | None) -> None:
    """A new version of ``name`` was registered; when promotion made it ``champion``, also ``itm.model.promoted``."""
    labels = {
        "prefect.resource.name": f"{name} v{version}",
        "itm.model.name": name,
        "itm.model.version": version,
        "itm.run_id": run_id,
        "itm.metric": metric,
    }
    payload = {"decision": decision.reason(), "promoted": decision.promoted}
    emit(MODEL_REGISTERED, f"itm.model.{name}.{version}", {**labels, "itm.promoted": decision.promoted}, payload)
    if decision.promoted:
        emit(MODEL_PROMOTED, f"itm.model.{name}.{version}", {**labels, "itm.previous_champion": previous}, payload)


def index_built(run_id: str, matcher: str, dataset: str, size: int, search_version: str | None, promoted: bool) -> None:
    emit(
        INDEX_BUILT,
        f"itm.index.{run_id}",
        {
            "prefect.resource.name": f"index of {dataset} by {matcher}",
            "itm.run_id": run_id,
            "itm.matcher": matcher,
            "itm.dataset.name": dataset,
            "itm.search.version": search_version,
            "itm.search.promoted": promoted,
        },
        {"items": size},
    )
