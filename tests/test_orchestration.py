"""What happens between runs, piece by piece: --set settings, run forms, the automations of
prefect.yaml, the one store, lineage. The whole chain on a real stack is in test_stack.py."""

from __future__ import annotations

import json

import mlflow
import pytest
from prefect.utilities.callables import parameter_schema

from flows import FLOWS, get_flow
from itm_core.config import EvaluateParams, IndexParams, RetrainParams
from itm_core.contract.params import ParamsFileError, apply_setting, params_from, run_values
from itm_core.errors import ParamsError, StackError
from itm_core.ops import automations
from itm_core.ops.forms import with_plugin_choices
from itm_core.ops.stack import deployment_specs


def test_set_applies_typed_values_at_any_depth():
    params = params_from(
        RetrainParams,
        settings=[
            "training.epochs=5",
            "training.lr=0.01",
            "dataset.options={n_train: 40, seed: 2}",
            "promotion.across_datasets=true",
            "text_to_image.model=gan",
            "run_name=nightly run",
        ],
    )
    assert params.training.epochs == 5 and params.training.lr == 0.01
    assert params.dataset.options == {"n_train": 40, "seed": 2} and params.promotion.across_datasets is True
    assert params.text_to_image.model == "gan" and params.run_name == "nightly run"
    # a list item by its index, on top of a file
    data = apply_setting({"matchers": [{"model_uri": "models:/a/1"}]}, "matchers.0.label=first")
    assert data == {"matchers": [{"model_uri": "models:/a/1", "label": "first"}]}


def test_set_on_top_of_a_file_and_its_mistakes(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("training:\n  epochs: 3\n  batch_size: 16\n")
    params = params_from(RetrainParams, path, ["training.epochs=7"])
    assert (params.training.epochs, params.training.batch_size) == (7, 16)
    with pytest.raises(ParamsFileError, match=r"p.yaml with --set training.epocs=2: .*did you mean 'epochs'"):
        params_from(RetrainParams, path, ["training.epocs=2"])
    with pytest.raises(ParamsFileError, match=r"--set training.epochs=many: .*training.epochs: Input should be"):
        params_from(RetrainParams, None, ["training.epochs=many"])
    with pytest.raises(ParamsError, match=r"--set expects KEY.PATH=VALUE .* got 'training'"):
        params_from(RetrainParams, None, ["training"])
    with pytest.raises(ParamsError, match=r"--set run_name.x: run_name is 'a', not a mapping"):
        params_from(RetrainParams, None, ["run_name=a", "run_name.x=1"])
    with pytest.raises(ParamsError, match=r"matchers is not in the parameters given, so it has no item 0"):
        params_from(EvaluateParams, None, ["matchers.0.label=x"])
    with pytest.raises(ParamsError, match=r"matchers.3 indexes a list of 1 items"):
        params_from(EvaluateParams, None, ["matchers=[{model_uri: 'models:/a/1'}]", "matchers.3.label=x"])


def test_run_forms_show_optional_fields_as_fields():
    """No field of any flow's form offers a 'None' type to pick (the form's "Property is type 'None'")
    unless None is not its default; and a deployment run's values leave those fields out."""
    for name in FLOWS:
        fn, _ = get_flow(name)
        text = json.dumps(with_plugin_choices(parameter_schema(fn).model_dump()))
        schema = json.loads(text)

        def nullable_with_none_default(node):
            if isinstance(node, dict):
                if {"type": "null"} in node.get("anyOf", []) and node.get("default") is None:
                    yield node
                for value in node.values():
                    yield from nullable_with_none_default(value)
            elif isinstance(node, list):
                for value in node:
                    yield from nullable_with_none_default(value)

        assert list(nullable_with_none_default(schema)) == [], name
    retrain = with_plugin_choices(parameter_schema(get_flow("retrain")[0]).model_dump())
    assert retrain["definitions"]["RetrainParams"]["properties"]["run_name"]["type"] == "string"
    values = run_values(RetrainParams())
    assert "run_name" not in values and values["text_to_image"]["model"] == "cvae"
    assert RetrainParams.model_validate(values) == RetrainParams()
    assert run_values(IndexParams(registered_model=None))["registered_model"] is None  # not its default: kept


def test_prefect_yaml_automations_as_shipped(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_HOME", str(tmp_path))
    specs = deployment_specs()
    found = {a.name: a for a in automations.declared(specs)}
    assert {n for n, a in found.items() if a.shipped} == {"index-for-new-champion", "leaderboard-for-new-champion"}
    assert found["index-for-new-champion"].deployment == "index/default"
    assert found["nightly-retrain"].kind == "schedule" and found["nightly-retrain"].deployment == "retrain/default"
    assert found["watch-data-hourly"].deployment == "watch-data/default"
    by_entry = {s["entrypoint"]: s for s in specs}
    (index_trigger,) = automations.triggers_of(by_entry["flows/index.py:index"])
    assert index_trigger.enabled and index_trigger.expect == {"itm.model.promoted"}
    assert index_trigger.match.root == {"itm.model.name": "itm-matcher"}
    (nightly,) = automations.schedules_of(by_entry["flows/retrain.py:retrain"])
    assert nightly.cron == "0 2 * * *" and not nightly.active and nightly.slug == "nightly-retrain"
    # a user's choice wins over prefect.yaml, for every later `itm up`
    automations.record("nightly-retrain", True)
    automations.record("index-for-new-champion", False)
    (nightly,) = automations.schedules_of(by_entry["flows/retrain.py:retrain"])
    (index_trigger,) = automations.triggers_of(by_entry["flows/index.py:index"])
    assert nightly.active and not index_trigger.enabled
    assert json.loads((tmp_path / "automations.json").read_text()) == {
        "index-for-new-champion": False,
        "nightly-retrain": True,
    }
    with pytest.raises(ParamsError, match="no automation named 'nightly'; the automations are: .*nightly-retrain"):
        automations.find("nightly", specs)
    twice = [{**specs[0], "triggers": [{"name": "a"}], "schedules": [{"slug": "a", "cron": "0 1 * * *"}]}]
    with pytest.raises(ParamsError, match="used more than once: a"):
        automations.declared(twice)


def test_one_store_in_the_workbench_home(tmp_path, monkeypatch):
    """Without a stack, a command opens the home's store: experiments keep their artifacts in the
    home (not ./mlruns), where the stack's MLflow server reads them."""
    from itm_core.ops.store import tracking_uri, use_home_store
    from itm_core.ops.tracking import ensure_experiment

    monkeypatch.setenv("ITM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("PREFECT_HOME")
    monkeypatch.chdir(tmp_path)
    chosen = use_home_store()
    assert chosen == {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}",
        "PREFECT_HOME": str(tmp_path / "home" / "prefect"),
    }
    mlflow.set_tracking_uri(tracking_uri())
    try:
        experiment = ensure_experiment("itm-somewhere")
        assert experiment.artifact_location == (tmp_path / "home" / "mlflow" / "artifacts" / "itm-somewhere").as_uri()
        with mlflow.start_run():
            mlflow.log_text("x", "x.txt")
        assert not (tmp_path / "mlruns").exists()
        # an experiment whose artifacts only its server can reach is refused in one line
        mlflow.create_experiment("proxied", artifact_location="mlflow-artifacts:/7")
        with pytest.raises(StackError, match="'proxied' keeps its artifacts behind the tracking server.*itm up"):
            ensure_experiment("proxied")
    finally:
        mlflow.set_tracking_uri(None)
    # from Python, as `itm` does
    import itm_core

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        assert itm_core.connect() == tracking_uri() == mlflow.get_tracking_uri()
    finally:
        mlflow.set_tracking_uri(None)
    # what the user set wins
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    assert use_home_store() == {}


def test_each_split_is_a_dataset_input_and_a_changed_dataset_is_noticed(mlflow_store, tiny_shapes):
    from flows.tasks import log_dataset

    mlflow.set_experiment("lineage")
    with mlflow.start_run() as first:
        assert log_dataset(tiny_shapes, []) == (tiny_shapes.fingerprint(), None)  # nothing read it before
    inputs = mlflow.get_run(first.info.run_id).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    assert set(by_name) == {"shapes:train", "shapes:val", "shapes:test"}
    test = by_name["shapes:test"]
    assert test.dataset.digest == tiny_shapes.split("test").fingerprint() and [t.value for t in test.tags] == ["test"]
    schema = json.loads(test.dataset.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == ["image", "caption", "split"]
    assert json.loads(test.dataset.profile)["num_rows"] == len(tiny_shapes.split("test").captions)
    # the next run of the experiment on other pairs of the same dataset sees what the last one read
    fewer = tiny_shapes.head(10)
    with mlflow.start_run() as second:
        assert log_dataset(fewer, []) == (fewer.fingerprint(), tiny_shapes.fingerprint())
    assert mlflow.get_run(second.info.run_id).data.tags["data.previous_fingerprint"] == tiny_shapes.fingerprint()
    assert mlflow.get_run(second.info.run_id).data.tags["data.name"] == "shapes"


def test_runs_that_log_the_same_dataset_at_once_all_link_it(mlflow_store, tiny_shapes):
    """MLflow checks for a dataset, then inserts it: concurrent runs reading the same data race on
    the store's unique constraint. Every run still ends with its three inputs, linked to one dataset
    per split."""
    import threading

    from itm_core.ops import lineage

    experiment = mlflow.set_experiment("concurrent").experiment_id
    client = mlflow.MlflowClient()
    runs = [client.create_run(experiment).info.run_id for _ in range(8)]
    start, errors = threading.Barrier(len(runs)), []

    def log(run_id: str) -> None:
        start.wait()
        try:
            with mlflow.start_run(run_id=run_id):
                lineage.log_inputs(tiny_shapes)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for run_id in runs:
        inputs = mlflow.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.name for i in inputs) == ["shapes:test", "shapes:train", "shapes:val"]


@pytest.mark.e2e
def test_watch_data_emits_an_event_for_new_and_changed_data(prefect_server, mlflow_store, tmp_path):
    """A manifest watched three times: new, unchanged, then changed (a pair added)."""
    import time

    import pandas as pd
    from PIL import Image
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    from flows.watch import watch_data
    from itm_core.config import DatasetParams, WatchParams

    for name, colour in (("a.png", "red"), ("b.png", "green"), ("c.png", "blue"), ("d.png", "white")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    pairs = pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "caption": ["red", "green", "blue"]})
    pairs["split"] = ["train", "val", "test"]
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    params = WatchParams(datasets=[DatasetParams(name="manifest", options={"path": str(tmp_path / "pairs.csv")})])
    (first,) = watch_data(params)["datasets"]
    (again,) = watch_data(params)["datasets"]
    pd.concat([pairs, pd.DataFrame({"image": ["d.png"], "caption": ["white"], "split": ["train"]})]).to_csv(
        tmp_path / "pairs.csv", index=False
    )
    (third,) = watch_data(params)["datasets"]
    assert first["changed"] and first["previous"] is None
    assert not again["changed"] and again["previous"] == first["fingerprint"]
    assert third["changed"] and third["previous"] == first["fingerprint"] != third["fingerprint"]
    runs = mlflow.search_runs(experiment_names=["itm-watch"], output_format="list")
    assert len(runs) == 3 and all(r.inputs.dataset_inputs for r in runs)

    EventsWorker.drain_all()
    deadline, seen = time.monotonic() + 60, []
    while time.monotonic() < deadline and len(seen) < 2:
        with get_client(sync_client=True) as client:
            answer = client._client.post(
                "/events/filter", json={"filter": {"event": {"name": ["itm.dataset.changed"]}}, "limit": 50}
            )
        seen = [e for e in answer.json()["events"] if e["resource"].get("itm.flow") == "watch-data"]
        time.sleep(1)
    assert sorted(e["resource"]["itm.dataset.fingerprint"] for e in seen) == sorted(
        [first["fingerprint"], third["fingerprint"]]
    )
    assert {e["resource"]["itm.dataset.previous"] for e in seen} == {"none", first["fingerprint"]}


def test_an_error_raised_while_handling_an_interrupt_counts_as_the_interrupt():
    """Prefect turns SIGTERM into TerminationSignal during a flow; a library interrupted in the middle
    of its own work may then raise an error of its own, with the signal as its context."""
    from prefect.exceptions import TerminationSignal

    from itm_core.ops.interrupts import is_interrupt

    def raised(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException:
                raise ValueError("Task run is not set")  # noqa: B904 (as the library raises it)
        except ValueError as exc:
            return exc

    assert is_interrupt(KeyboardInterrupt()) and is_interrupt(TerminationSignal(15))
    assert is_interrupt(raised(TerminationSignal(15))) and is_interrupt(raised(KeyboardInterrupt()))
    assert not is_interrupt(raised(RuntimeError("a bug"))) and not is_interrupt(None)
