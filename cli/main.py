"""The ``itm`` command: list plugins, run flows with a parameters file, run the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli import search, stack
from cli.output import console, err, flow_session
from cli.output import debug as _debug
from cli.output import fail as _fail
from cli.output import flows_console as _flows_console
from cli.output import unreachable_server as _unreachable_server
from itm_core.errors import ParamsError, PluginError, UserError

# Prefect's ephemeral server needs longer than its default to start on small machines.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# Nothing leaves the machine unless the user configured it: no usage telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="ITM workbench: image-text matching and fusion as plugins and flows.",
)


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", help="Show the libraries' own output and full tracebacks (also ITM_DEBUG=1)"
    ),
) -> None:
    """ITM workbench: image-text matching and fusion as plugins and flows. Every command uses one
    MLflow store and one Prefect database, in ./.itm (ITM_HOME): through the servers of `itm up`
    while it runs here, directly otherwise (unless MLFLOW_TRACKING_URI or PREFECT_API_URL say otherwise)."""
    from itm_core.ops.console import quiet_libraries
    from itm_core.ops.stack import use_running_stack
    from itm_core.ops.store import use_home_store

    if debug:
        os.environ["ITM_DEBUG"] = "1"
    if not _debug():
        quiet_libraries()

    stack = use_running_stack()
    if stack is not None:
        err.print(f"using the running stack: Prefect {stack.prefect_ui}, MLflow {stack.mlflow_uri}", highlight=False)
    else:  # the files the stack serves, opened directly: one store either way
        use_home_store()


plugins_app = typer.Typer(help="List the installed plugins and their components.")
app.add_typer(plugins_app, name="plugins")


def plugin_listing() -> list[dict[str, Any]]:
    """Every plugin (loaded or failed) with its version, hooks and the components it registered."""
    from itm_core.contract.plugins import get_plugin_manager
    from itm_core.contract.registry import collect

    pm = get_plugin_manager()
    by_plugin: dict[str, list[dict[str, Any]]] = {}
    for specs in collect().values():
        for s in specs.values():
            by_plugin.setdefault(s.plugin, []).append(s.describe())
    listing = []
    for info in sorted(pm.info.values(), key=lambda i: (not i.builtin, i.name)):
        entry: dict[str, Any] = {
            "name": info.name,
            "version": info.version,
            "hooks": info.hooks,
            "components": by_plugin.get(info.name, []),
        }
        entry["builtin"] = info.builtin
        if info.error:
            entry["error"] = info.error
        listing.append(entry)
    return listing


@plugins_app.callback(invoke_without_command=True)
def plugins(
    ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table")
) -> None:
    """List plugins: name, version, hooks and components."""
    if ctx.invoked_subcommand:
        return
    try:
        listing = plugin_listing()
    except UserError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(listing, indent=2, default=str))
        return
    table = Table(title="itm plugins")
    for col in ("plugin", "version", "components", "status"):
        table.add_column(col)
    for p in listing:
        comps = (
            ", ".join(
                f"{c['kind']}:{c['name']}"
                + ("" if c.get("available", True) else f" [yellow](unavailable: {c['install']})[/]")
                for c in p["components"]
            )
            or "-"
        )
        status = f"[red]failed: {p['error']}[/]" if "error" in p else ("built-in" if p["builtin"] else "external")
        table.add_row(p["name"], str(p["version"]), comps, status)
    console.print(table)


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@plugins_app.command("check")
def check(
    name: str = typer.Argument(..., help="Component name, e.g. minilm"),
    kind: str | None = typer.Option(None, "--kind", "-k", help="Component kind, when the name exists under several"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Factory option KEY=VALUE (VALUE parsed as JSON when it can be)"
    ),
) -> None:
    """Run the conformance checks on a component; exit status 0 only when it passes."""
    from itm_core.contract.components import KINDS
    from itm_core.contract.registry import collect
    from itm_core.contract.testing import check_component

    try:
        registered = collect()
    except UserError as exc:
        _fail(exc)
    kinds = [k for k in KINDS if name in registered[k] and (kind is None or k == kind)]
    if not kinds:
        _fail(PluginError(f"no component named {name!r}{f' of kind {kind!r}' if kind else ''}; see `itm plugins`"))
    if len(kinds) > 1:
        _fail(ParamsError(f"{name!r} is registered as {' and '.join(kinds)}; choose one with --kind"))
    options = {}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(ParamsError(f"--option expects KEY=VALUE, got {item!r}"))
        options[key] = _option_value(value)
    report = check_component(kinds[0], name, **options)
    table = Table(title=f"{report.kind} {report.name!r} (plugin {report.plugin!r})")
    for col in ("rule", "result", "detail"):
        table.add_column(col)
    colour = {"pass": "green", "fail": "red", "skip": "yellow"}
    for r in report.results:
        table.add_row(r.rule, f"[{colour[r.status]}]{r.status}[/]", r.detail)
    console.print(table)
    if not report.ok:
        err.print(f"[bold red]failed:[/] {report.summary()}", highlight=False)
        raise typer.Exit(1)
    console.print(report.summary())


data_app = typer.Typer(help="Prepare datasets: pack a manifest into WebDataset shards.")
app.add_typer(data_app, name="data")


@data_app.command("pack")
def data_pack(
    manifest: Path = typer.Argument(..., help="A CSV, Parquet, JSONL or Karpathy JSON manifest"),
    out: Path = typer.Argument(..., help="Folder for the shards"),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per shard"),
    root: Path | None = typer.Option(None, help="Folder the manifest's image paths are relative to (default: its own)"),
) -> None:
    """Write MANIFEST's images and captions as WebDataset shards OUT/shard-NNNNN.tar (read them back
    with the `webdataset` dataset, urls OUT/shard-{00000..NNNNN}.tar)."""
    from itm_core.data import load_manifest
    from itm_core.data.webdataset import pack

    try:
        data = load_manifest(manifest, root=root)
        shards = pack(data, out, shard_size)
    except UserError as exc:
        _fail(exc)
    last = len(shards) - 1
    console.print(
        f"{len(data)} images, {len(data.captions)} captions in {len(shards)} shards: "
        f"{out}/shard-{{00000..{last:05d}}}.tar",
        highlight=False,
    )


def _flow_names() -> list[str]:
    from flows import FLOWS

    return list(FLOWS)


@app.command("run")
def run_flow(
    flow: str = typer.Argument(..., help="One of: " + ", ".join(_flow_names())),
    params: Path | None = typer.Option(
        None, "--params", "-p", help="JSON or YAML file validated by the flow's parameter model"
    ),
    settings: list[str] = typer.Option(
        [], "--set", "-s", help="KEY.PATH=VALUE on top of the file or the defaults (repeatable), e.g. training.epochs=5"
    ),
) -> None:
    """Run a flow here, its parameters read from FILE (defaults otherwise), changed by --set."""
    from flows import get_flow
    from itm_core.contract.params import params_from

    try:
        fn, model = get_flow(flow)
        values = params_from(model, params, settings)
    except UserError as exc:
        _fail(exc)
    with flow_session(f"the {flow} flow"):
        _flows_console()
        try:
            result = fn(values)
        except UserError as exc:
            _fail(_unreachable_server(exc) or exc)
        except Exception as exc:
            reason = _unreachable_server(exc)
            if reason is None:
                raise
            _fail(reason)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def demo(
    train_images: int = typer.Option(2000, help="Training images of the dataset"),
    eval_images: int = typer.Option(500, help="Validation and test images each"),
    dataset: str = typer.Option(
        "scenes",
        help="The built-in data: scenes (relations between up to four objects), or shapes (one or two objects, easier)",
    ),
) -> None:
    """Build the data, retrain twice, evaluate a leaderboard and caption test images; all in MLflow."""
    from flows.demo import run_demo
    from itm_core.config import DatasetParams

    if dataset not in ("shapes", "scenes"):
        _fail(ParamsError(f"demo: --dataset must be shapes or scenes, got {dataset!r}"))
    options = (
        {}
        if (train_images, eval_images) == (2000, 500)
        else {"n_train": train_images, "n_val": eval_images, "n_test": eval_images}
    )
    with flow_session("the demo"):
        _flows_console()
        try:
            run_demo(DatasetParams(name=dataset, options=options), console=console)
        except UserError as exc:
            _fail(exc)


@app.command("explain")
def explain_pair_command(
    image: Path | None = typer.Option(
        None, "--image", "-i", help="Image file (default: the first test image of shapes)"
    ),
    text: str | None = typer.Option(
        None, "--text", "-t", help="Text to explain with it (default: that image's first caption)"
    ),
    matcher: str = typer.Option(
        "models:/itm-matcher@champion", "--matcher", "-m", help="Model URI or saved matcher folder"
    ),
    grid: int = typer.Option(8, help="Occlusion grid (grid x grid cells)"),
    explainer: list[str] | None = typer.Option(
        None, "--explainer", "-e", help="An explainer plugin (repeat for several; default: occlusion and word-deletion)"
    ),
) -> None:
    """Why a matcher scores an image-text pair as it does: occlusion heat map and per-word contributions,
    or other explainers."""
    from pydantic import ValidationError

    from flows.explain import explain
    from itm_core.config import ExplainParams, MatcherRef
    from itm_core.contract.params import problems

    _flows_console()
    try:
        chosen = {"explainers": list(explainer)} if explainer else {}
        try:
            params = ExplainParams(
                matcher=MatcherRef(model_uri=matcher),
                image=str(image) if image else None,
                text=text,
                grid=grid,
                **chosen,
            )
        except ValidationError as exc:
            raise ParamsError(f"explain: {problems(exc)}") from None
        result = explain(params)
    except UserError as exc:
        _fail(exc)
    bars = {name: r["word_scores"] for name, r in result["explainers"].items() if r["word_scores"] is not None}
    table = Table("word", *(f"{name}" for name in bars))
    for n, word in enumerate(result["text"].split()):
        table.add_row(word, *(f"{values[n]:+.4f}" for values in bars.values()))
    console.print(f"score {result['score']:.4f} for {result['text']!r} on {result['image']}")
    for name, reason in result["skipped"].items():
        console.print(f"{name}: skipped: {reason}")
    console.print(table)
    console.print(f"heat maps: explanation.png in MLflow run {result['run_id']}")


app.command("search")(search.search)
app.command()(stack.up)
app.command()(stack.down)
app.add_typer(stack.deployments_app, name="deployments")
app.add_typer(stack.automations_app, name="automations")

if __name__ == "__main__":
    app()
