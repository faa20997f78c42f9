"""Deployments of the Prefect server in use: their parameters, and a run of one triggered from the terminal."""

from __future__ import annotations

from typing import Any

from itm_core.errors import ParamsError


def deployment_parameters(name: str) -> dict[str, Any]:
    """The parameters ``flow/deployment`` runs with by default (as the server has them)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return dict(client.read_deployment_by_name(name).parameters or {})
        except ObjectNotFound:
            known = sorted(f"{d.name}" for d in client.read_deployments())
            raise ParamsError(
                f"no deployment {name!r} on the Prefect server; name it FLOW/DEPLOYMENT (e.g. retrain/default; "
                f"`itm deployments ls` lists them; deployment names here: {', '.join(sorted(set(known)))})"
            ) from None


def trigger(name: str, parameters: dict[str, Any], wait: bool) -> tuple[Any, str]:
    """Create a flow run of deployment ``name`` with ``parameters`` (and wait for its end when asked);
    the run and its page in the Prefect UI."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_UI_URL

    run: Any = run_deployment(name, parameters=parameters, timeout=None if wait else 0)
    return run, f"{PREFECT_UI_URL.value()}/runs/flow-run/{run.id}"
