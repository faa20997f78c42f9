"""``itm up`` / ``itm down``, ``itm deployments`` and ``itm automations``: the local stack and what it runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.table import Table

from cli.output import console, fail
from itm_core.errors import ParamsError, StackError, UserError

deployments_app = typer.Typer(help="The deployments the stack serves: list them, trigger one with parameters.")
automations_app = typer.Typer(
    help="The triggers and schedules of prefect.yaml: list them, switch one on or off.", invoke_without_command=True
)


def up(
    prefect_port: int = typer.Option(4200, help="Port of the Prefect server and UI"),
    mlflow_port: int = typer.Option(5000, help="Port of the MLflow tracking server and UI"),
    timeout: float = typer.Option(240, help="Seconds to wait for each process to answer"),
    host: str = typer.Option(
        "127.0.0.1", help="Address to bind; any other than 127.0.0.1 needs ITM_AUTH_USER and ITM_AUTH_PASSWORD"
    ),
) -> None:
    """Start a Prefect server, an MLflow tracking server and the served deployments with their
    automations, on 127.0.0.1 (or --host, with authentication), over the store in ./.itm."""
    from itm_core.ops.stack import up as start

    try:
        stack = start(prefect_port, mlflow_port, timeout=timeout, echo=console.print, host=host)
    except UserError as exc:
        fail(exc)
    table = Table("process", "where", "log")
    for row in stack.describe():
        table.add_row(*row)
    console.print(table)
    from itm_core.ops.automations import declared, is_on
    from itm_core.ops.stack import deployment_specs

    found = declared(deployment_specs())
    on, off = [a.name for a in found if is_on(a)], [a.name for a in found if not is_on(a)]
    console.print(f"automations on: {', '.join(on) or 'none'}; off: {', '.join(off) or 'none'} (itm automations)")
    auth = (
        (
            '  export PREFECT_API_AUTH_STRING="$ITM_AUTH_USER:$ITM_AUTH_PASSWORD"\n  export '
            'MLFLOW_TRACKING_USERNAME="$ITM_AUTH_USER" '
            'MLFLOW_TRACKING_PASSWORD="$ITM_AUTH_PASSWORD"\n'
        )
        if stack.auth
        else ""
    )
    console.print(
        "Use it from a shell:\n"
        + "".join(f"  export {k}={v}\n" for k, v in stack.env().items())
        + auth
        + "Stop it with: itm down"
    )


def down() -> None:
    """Stop the stack that ``itm up`` started here."""
    from itm_core.ops.stack import down as stop

    stop(echo=console.print)


def _require_server() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        fail(StackError("no Prefect server to send it to: start the stack (`itm up`) or set PREFECT_API_URL"))


@deployments_app.command("run")
def deployments_run(
    name: str = typer.Argument(..., help="FLOW/DEPLOYMENT, e.g. retrain/default (see `itm deployments ls`)"),
    params: Path | None = typer.Option(
        None, "--params", "-p", help="JSON or YAML file of parameters (instead of the deployment's own)"
    ),
    settings: list[str] = typer.Option(
        [], "--set", "-s", help="KEY.PATH=VALUE over the deployment's parameters (repeatable), e.g. training.epochs=5"
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for the flow run to finish and print its state"),
) -> None:
    """Trigger a deployment of the running stack with its parameters, changed by --params and --set
    (validated here, exactly as `itm run` validates them), and print the flow run's page."""
    from flows import get_flow
    from itm_core.contract.params import params_from, run_values
    from itm_core.ops.deployments import deployment_parameters, trigger

    _require_server()
    flow_name, _, _ = name.partition("/")
    try:
        _, model = get_flow(flow_name)
        values = params_from(model, params, settings, base=deployment_parameters(name).get("params", {}))
        run, url = trigger(name, {"params": run_values(values)}, wait)
    except UserError as exc:
        fail(exc)
    state = run.state.name if run.state else "scheduled"
    console.print(f"flow run {run.name} ({run.id}) of {name}: {state}", soft_wrap=True)  # one line, however long
    console.print(url, highlight=False, soft_wrap=True)


@deployments_app.command("ls")
def deployments_ls() -> None:
    """The deployments the running stack serves."""
    from itm_core.ops.stack import load_stack, served_deployments

    _require_server()
    stack = load_stack()
    if stack is None:
        fail(StackError("no stack runs here (`itm up`)"))
    for name in served_deployments(stack):
        console.print(name, highlight=False)


@automations_app.callback()
def automations(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """List the triggers and schedules of prefect.yaml, on or off."""
    if ctx.invoked_subcommand:
        return
    from itm_core.ops.automations import declared, is_on, switches
    from itm_core.ops.stack import deployment_specs

    try:
        found, chosen = declared(deployment_specs()), switches()
    except UserError as exc:
        fail(exc)
    rows = [{**a.__dict__, "on": is_on(a, chosen)} for a in found]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("automation", "kind", "runs", "when", "state")
    table.columns[0].no_wrap = table.columns[2].no_wrap = True
    for r in rows:
        table.add_row(r["name"], r["kind"], r["deployment"], r["when"], "[green]on[/]" if r["on"] else "off")
    console.print(table)
    console.print("Switch one with: itm automations on|off NAME")


def _switch(name: str, on: bool) -> None:
    from itm_core.ops.automations import find, record, switch_live
    from itm_core.ops.stack import deployment_specs

    try:
        automation = find(name, deployment_specs())
    except ParamsError as exc:
        fail(exc)
    record(name, on)
    live = bool(os.environ.get("PREFECT_API_URL")) and switch_live(automation, on)
    where = "on the running stack and for every `itm up`" if live else "from the next `itm up` on"
    console.print(f"{name} ({automation.kind} of {automation.deployment}) is {'on' if on else 'off'} {where}")


@automations_app.command("on")
def automations_on(name: str = typer.Argument(..., help="An automation of `itm automations`")) -> None:
    """Switch a trigger or schedule on (now, when the stack runs, and at every `itm up`)."""
    _switch(name, True)


@automations_app.command("off")
def automations_off(name: str = typer.Argument(..., help="An automation of `itm automations`")) -> None:
    """Switch a trigger or schedule off (now, when the stack runs, and at every `itm up`)."""
    _switch(name, False)
