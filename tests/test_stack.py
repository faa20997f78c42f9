"""The local stack as users run it: ``itm up`` starts a real Prefect server, a real MLflow tracking
server and the served deployments on loopback; flows are triggered through the Prefect API the way
the UI triggers them; headless Chromium opens the Prefect and MLflow pages; ``itm down`` stops it all."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ITM = str(Path(sys.executable).parent / "itm")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
    "--dump-dom",
]


TINY = {"n_train": 48, "n_val": 16, "n_test": 16, "seed": 3, "image_size": 64}
TINY_RETRAIN = [
    "--set",
    f"dataset.options={json.dumps(TINY)}",
    "--set",
    "image_encoder.name=color-histogram",
    "--set",
    "text_encoder.name=tfidf",
    "--set",
    "training.epochs=2",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, body: dict | None = None) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST"
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("stack-home")
    env = {**os.environ, "ITM_HOME": str(home)}
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_API_URL"):
        env.pop(key, None)
    # a run before the stack exists (as `make demo` before `make up`): it lands in the home's store
    before = subprocess.run(
        [ITM, "run", "retrain", *TINY_RETRAIN, "--set", "run_name=before the stack"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=home,
    )
    assert before.returncode == 0, before.stdout[-2000:] + before.stderr[-3000:]
    ports = {"prefect": free_port(), "mlflow": free_port()}
    started = subprocess.run(
        [ITM, "up", "--prefect-port", str(ports["prefect"]), "--mlflow-port", str(ports["mlflow"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    state = json.loads((home / "stack" / "stack.json").read_text())
    yield {
        "home": home,
        "env": env,
        "output": started.stdout,
        "before": json.loads(before.stdout[before.stdout.index("{") :]),
        "state": state,
        "prefect": f"http://127.0.0.1:{ports['prefect']}",
        "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
    }
    stopped = subprocess.run([ITM, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr


def run_deployment(stack: dict, name: str, params: dict, timeout: float = 600) -> dict:
    """Create a flow run of a deployment, as the UI's Run button does, and wait for its final state."""
    deployment = api(f"{stack['prefect']}/api/deployments/name/{name}")
    run = api(
        f"{stack['prefect']}/api/deployments/{deployment['id']}/create_flow_run", {"parameters": {"params": params}}
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(f"{stack['prefect']}/api/flow_runs/{run['id']}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(2)
    assert run["state"]["type"] == "COMPLETED", (
        f"{name}: {run['state']}; serve log: {Path(stack['state']['logs']['serve']).read_text()[-3000:]}"
    )
    return {"run": run, "deployment": deployment}


def chromium_dom(url: str, profile: Path, needles: tuple[str, ...] = (), attempts: int = 3) -> str:
    """The page as headless Chromium renders it; rendered again (up to ``attempts`` times) while some of
    ``needles`` are missing, since a loaded machine may not finish the single-page app within one
    virtual-time budget."""
    for _ in range(attempts):
        out = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url], capture_output=True, text=True, timeout=120
        )
        if all(n in out.stdout for n in needles):
            break
    return out.stdout


def test_up_prints_what_runs_where(stack):
    assert stack["prefect"] in stack["output"] and stack["mlflow"] in stack["output"]
    assert "evaluate/default" in stack["output"] and "itm down" in stack["output"]
    assert "automations on: leaderboard-for-new-champion, index-for-new-champion;" in stack["output"]
    assert api(f"{stack['prefect']}/api/health") is True
    # a second `itm up` finds the running stack instead of starting another
    again = subprocess.run([ITM, "up"], env=stack["env"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already running" in again.stdout


def test_forms_offer_registered_plugins(stack):
    deployment = api(f"{stack['prefect']}/api/deployments/name/retrain/default")
    schema = deployment["parameter_openapi_schema"]
    definitions = schema["definitions"]
    retrain = definitions["RetrainParams"]["properties"]
    image_def = retrain["image_encoder"]["$ref"].rsplit("/", 1)[-1]
    text_def = retrain["text_encoder"]["$ref"].rsplit("/", 1)[-1]
    assert {"efficientnet-lite0", "color-histogram"} <= set(definitions[image_def]["properties"]["name"]["enum"])
    assert "minilm" not in definitions[image_def]["properties"]["name"]["enum"]
    assert {"minilm", "tfidf"} <= set(definitions[text_def]["properties"]["name"]["enum"])
    assert retrain["task"]["enum"] == ["matching", "captioning", "text-to-image"]
    assert retrain["task"]["description"] and retrain["registered_model"]["description"]
    generate = api(f"{stack['prefect']}/api/deployments/name/generate/default")["parameter_openapi_schema"][
        "definitions"
    ]["GenerateParams"]
    assert {"retrieval-captioner", "trained-captioner", "trained-text-to-image"} <= set(
        generate["properties"]["generator"]["enum"]
    )


def test_flows_triggered_through_the_api_land_in_mlflow_and_the_pages_show_them(stack, tiny_shapes_options, tmp_path):
    from mlflow.tracking import MlflowClient

    dataset = {"options": tiny_shapes_options}
    run_deployment(
        stack,
        "retrain/default",
        {
            "dataset": dataset,
            "image_encoder": {"name": "color-histogram"},
            "text_encoder": {"name": "tfidf", "options": {"max_features": 256}},
            "training": {"epochs": 2, "batch_size": 16},
        },
    )
    done = run_deployment(stack, "evaluate/default", {"dataset": dataset})
    flow_run = done["run"]

    # the MLflow run on the tracking server, tagged with the flow run
    client = MlflowClient(tracking_uri=stack["mlflow"])
    experiment = client.get_experiment_by_name("itm-evaluate")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run['id']}'"
    )
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1
    mlflow_run = parent[0]
    assert mlflow_run.data.tags["prefect.flow_name"] == "evaluate"
    assert mlflow_run.data.tags["prefect.flow_run_url"].startswith(stack["prefect"])
    assert client.get_model_version_by_alias("itm-matcher", "champion").version

    # the flow run's link artifact points at that MLflow run on the tracking server
    artifacts = api(
        f"{stack['prefect']}/api/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}
    )
    links = [a for a in artifacts if a["type"] == "markdown" and "MLflow run" in (a["data"] or "")] + [
        a for a in artifacts if a["type"] == "link"
    ]
    run_page = f"{stack['mlflow']}/#/experiments/{experiment.experiment_id}/runs/{mlflow_run.info.run_id}"
    assert any(run_page in (a["data"] or "") for a in links), artifacts

    if CHROMIUM is None:
        pytest.fail("chromium is not installed: make test installs Debian's chromium for this test")
    deployment_page = chromium_dom(
        f"{stack['prefect']}/deployments/deployment/{done['deployment']['id']}?tab=Runs",
        tmp_path / "chromium-1",
        ("evaluate", flow_run["name"], "Completed"),
    )
    assert "evaluate" in deployment_page and flow_run["name"] in deployment_page and "Completed" in deployment_page
    mlflow_page = chromium_dom(run_page, tmp_path / "chromium-2", (mlflow_run.info.run_name, mlflow_run.info.run_id))
    assert mlflow_run.info.run_name in mlflow_page and mlflow_run.info.run_id in mlflow_page


def test_itm_commands_use_the_running_stack(stack, tiny_shapes_options, tmp_path):
    """With the stack up and no PREFECT_API_URL / MLFLOW_TRACKING_URI set, `itm run` lands in the stack."""
    from mlflow.tracking import MlflowClient

    params = tmp_path / "eval.json"
    params.write_text(
        json.dumps(
            {
                "dataset": {"options": tiny_shapes_options},
                "experiment": "from-the-cli",
                "matchers": [
                    {
                        "image_encoder": {"name": "color-histogram"},
                        "text_encoder": {"name": "tfidf"},
                        "untrained_heads": True,
                    }
                ],
            }
        )
    )
    env = {k: v for k, v in stack["env"].items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    out = subprocess.run(
        [ITM, "run", "evaluate", "--params", str(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert f"using the running stack: Prefect {stack['prefect']}" in out.stderr
    experiment = MlflowClient(tracking_uri=stack["mlflow"]).get_experiment_by_name("from-the-cli")
    assert experiment is not None
    runs = MlflowClient(tracking_uri=stack["mlflow"]).search_runs([experiment.experiment_id])
    flow_run_id = next(r.data.tags["prefect.flow_run_id"] for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert api(f"{stack['prefect']}/api/flow_runs/{flow_run_id}")["state"]["type"] == "COMPLETED"
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store


def cli(stack: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """An `itm` command as a user types it while the stack runs (no PREFECT_API_URL / MLFLOW_TRACKING_URI set)."""
    env = {k: v for k, v in stack["env"].items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    out = subprocess.run(
        [ITM, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert out.returncode == 0, f"itm {' '.join(args)}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
    return out


def test_a_run_made_before_the_stack_is_in_it(stack):
    """One store: what `itm run` (or `make demo`) wrote while no stack ran shows in the stack's MLflow,
    with its champion, its artifacts and its datasets, and its flow run in the stack's Prefect."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack["mlflow"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("itm-retrain").experiment_id], "attributes.run_name = 'before the stack'"
    )
    champion = client.get_model_version_by_alias("itm-matcher", "champion")
    assert champion.version == stack["before"]["model_version"] == "1" and champion.run_id == run.info.run_id
    assert {"recall_at_k.png", "retrieval_examples.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"shapes:train", "shapes:val", "shapes:test"}
    flow_run = api(f"{stack['prefect']}/api/flow_runs/{run.data.tags['prefect.flow_run_id']}")
    assert flow_run["state"]["type"] == "COMPLETED"
    assert champion.tags["prefect.flow_run_id"] == flow_run["id"]  # the version links to its flow run


def test_the_run_form_shows_optional_fields(stack, tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: make test installs Debian's chromium for this test")
    deployment = api(f"{stack['prefect']}/api/deployments/name/retrain/default")
    page = chromium_dom(
        f"{stack['prefect']}/deployments/deployment/{deployment['id']}/run", tmp_path / "chromium", ("Run Name",)
    )
    assert "Run Name" in page and "Registered Model" in page and "Image Encoder" in page
    assert "Property is type" not in page


def test_automations_switch_on_the_running_stack(stack):
    listed = json.loads(cli(stack, "automations", "--json").stdout)
    assert {a["name"]: a["on"] for a in listed} == {
        "retrain-on-new-data": False,
        "nightly-retrain": False,
        "leaderboard-for-new-champion": True,
        "index-for-new-champion": True,
        "watch-data-hourly": False,
    }
    schedules = lambda: api(f"{stack['prefect']}/api/deployments/name/retrain/default")["schedules"]  # noqa: E731
    assert [(s["slug"], s["active"]) for s in schedules()] == [("nightly-retrain", False)]
    out = cli(stack, "automations", "on", "nightly-retrain")
    assert "on the running stack" in out.stdout
    assert [(s["slug"], s["active"]) for s in schedules()] == [("nightly-retrain", True)]
    cli(stack, "automations", "off", "nightly-retrain")
    assert [(s["slug"], s["active"]) for s in schedules()] == [("nightly-retrain", False)]
    automations = api(f"{stack['prefect']}/api/automations/filter", {})
    assert {a["name"]: a["enabled"] for a in automations}["retrain-on-new-data"] is False


def test_a_promotion_alone_builds_the_index_and_the_leaderboard(stack, tmp_path):
    """The champion chain: a retrain triggered from the terminal (--set) is promoted; the index and
    evaluate deployments run by themselves; `itm search` answers with the new champion; the events
    are in the Event Feed and each run's data in MLflow's Datasets panel."""
    from mlflow.tracking import MlflowClient

    started = time.time()
    out = cli(
        stack, "deployments", "run", "retrain/default", *TINY_RETRAIN, "--set", "promotion.policy=always", "--wait"
    )
    assert "retrain/default: Completed" in out.stdout and f"{stack['prefect']}/runs/flow-run/" in out.stdout
    client = MlflowClient(tracking_uri=stack["mlflow"])
    version = client.get_model_version_by_alias("itm-matcher", "champion").version
    assert version != "1"

    chained = {}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and len(chained) < 2:
        for name in ("index/default", "evaluate/default"):
            deployment = api(f"{stack['prefect']}/api/deployments/name/{name}")
            runs = api(
                f"{stack['prefect']}/api/flow_runs/filter",
                {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}},
            )
            done = [
                r
                for r in runs
                if r["state"]["type"] == "COMPLETED"
                and r["created"] >= time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started))
            ]
            failed = [r for r in runs if r["state"]["type"] in ("FAILED", "CRASHED")]
            assert not failed, (
                f"{name}: {failed[0]['state']}; {Path(stack['state']['logs']['serve']).read_text()[-3000:]}"
            )
            if done:
                chained[name] = done[0]
        time.sleep(3)
    assert set(chained) == {"index/default", "evaluate/default"}, "the chain did not run"

    promoted = api(
        f"{stack['prefect']}/api/events/filter",
        {
            "filter": {
                "event": {"name": ["itm.model.promoted"]},
                "resource": {"id": [f"itm.model.itm-matcher.{version}"]},
            }
        },
    )["events"]
    assert promoted and promoted[0]["resource"]["itm.model.version"] == version

    searched = cli(stack, "search", "a red circle", "-k", "2")
    assert f"built with itm-matcher v{version}" in searched.stdout

    for experiment in ("itm-retrain", "itm-index", "itm-evaluate"):
        (latest,) = client.search_runs(
            [client.get_experiment_by_name(experiment).experiment_id],
            "tags.`mlflow.parentRunId` IS NULL",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        assert latest.inputs.dataset_inputs, f"{experiment}: no datasets"

    if CHROMIUM is None:
        pytest.fail("chromium is not installed: make test installs Debian's chromium for this test")
    feed = chromium_dom(f"{stack['prefect']}/events", tmp_path / "chromium", ("itm.model.promoted",))
    assert "itm.model.promoted" in feed and "itm.index.built" in feed
