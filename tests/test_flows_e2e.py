"""End to end: the three flows as real Prefect flow runs against a real MLflow store, on tiny shapes."""

from __future__ import annotations

import base64
import json

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from itm_core.config import (
    ComponentParams,
    ContrastiveTraining,
    DatasetParams,
    EvaluateParams,
    GenerateParams,
    MatcherRef,
    RetrainParams,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CLASSIC = dict(
    image_encoder=ComponentParams(name="color-histogram"),
    text_encoder=ComponentParams(name="tfidf", options={"max_features": 256}),
)
PRETRAINED = dict(
    image_encoder=ComponentParams(name="efficientnet-lite0", options={"image_size": 64}),
    text_encoder=ComponentParams(name="minilm"),
)


def test_retrain_evaluate_generate(prefect_server, mlflow_store, tiny_shapes_options, tmp_path):
    from flows.evaluate import evaluate
    from flows.generate import generate
    from flows.retrain import retrain

    dataset = DatasetParams(options=tiny_shapes_options)
    training = ContrastiveTraining(epochs=4, batch_size=16, patience=4)
    first = retrain(RetrainParams(dataset=dataset, training=training, **PRETRAINED))
    second = retrain(RetrainParams(dataset=dataset, training=training, **CLASSIC))
    client = MlflowClient()

    # registry: two versions; the first is champion, and 16 test images are too few to replace it
    versions = {str(v.version): v for v in client.search_model_versions("name='itm-matcher'")}
    assert set(versions) == {"1", "2"}
    champion = client.get_model_version_by_alias("itm-matcher", "champion")
    assert first["promoted"] and first["model_version"] == "1"
    assert str(champion.version) == "1" and not second["promoted"]
    v2 = client.get_model_version("itm-matcher", "2").tags
    assert v2["promotion.policy"] == "evidence" and v2["promotion.n"] == "16" and v2["promotion.promoted"] == "False"
    difference = second["test"]["rsum"] - client.get_run(second["run_id"]).data.metrics["champion_test_rsum"]
    assert v2["promotion"] == (
        f"kept champion v1 over v2: rsum {v2['promotion.interval']} on 16 test images: too few to replace a "
        "champion (promotion.min_test_images is 50)"
    )
    assert v2["promotion.interval"].startswith(f"{difference:+.1f} [")

    # the retrain run: params, per-epoch curves, test metrics, Prefect link tags, the decision
    run = client.get_run(second["run_id"])
    assert run.data.params["image_encoder.name"] == "color-histogram"
    assert run.data.params["training.epochs"] == "4"
    assert run.data.tags["prefect.flow_name"] == "retrain" and run.data.tags["prefect.flow_run_id"]
    assert run.data.tags["promotion.metric"] == "rsum" and run.data.tags["promotion.decision"].startswith(
        ("promoted", "kept")
    )
    curve = client.get_metric_history(run.info.run_id, "val_rsum")
    assert [m.step for m in curve] == list(range(1, len(curve) + 1)) and len(curve) >= 1
    assert run.data.metrics["test_rsum"] == pytest.approx(second["test"]["rsum"])
    assert "champion_test_rsum" in run.data.metrics

    # the logged model scores pairs through pyfunc, from the registry
    model = mlflow.pyfunc.load_model("models:/itm-matcher@champion")
    from itm_core import create

    data = create("dataset", "shapes", **tiny_shapes_options).load().split("test")
    png = base64.b64encode(data.image_path(0).read_bytes()).decode()
    frame = pd.DataFrame({"image": [png] * 2, "text": [data.captions_of(0)[0], "tax law of 1987"]})
    scores = model.predict(frame)["score"].tolist()
    # a path on the serving machine is refused: requests carry image data, not file names
    with pytest.raises(mlflow.exceptions.MlflowException, match="not base64-encoded image data"):
        model.predict(pd.DataFrame({"image": [str(data.image_path(0))], "text": ["a red circle"]}))
    assert len(scores) == 2 and all(-1.0 <= s <= 1.0 for s in scores)

    # evaluate: a leaderboard of three, as nested runs plus a table
    board = evaluate(
        EvaluateParams(
            dataset=dataset,
            matchers=[
                MatcherRef(model_uri="models:/itm-matcher@champion", label="champion"),
                MatcherRef(model_uri="models:/itm-matcher/2"),
                MatcherRef(untrained_heads=True, label="chance", **PRETRAINED),
            ],
        )
    )
    assert [r["matcher"] for r in board][-1] == "chance"
    by_name = {r["matcher"]: r for r in board}
    assert by_name["models:/itm-matcher/2"]["rsum"] == pytest.approx(second["test"]["rsum"], abs=1e-3)
    assert by_name["champion"]["rsum"] == pytest.approx(first["test"]["rsum"], abs=1e-3)  # v1 stayed champion
    for row in board:  # each figure with its 95% interval around it
        assert all(row[f"{m}_low"] <= row[m] <= row[f"{m}_high"] for m in ("i2t_r1", "t2i_r5", "rsum")), row
    assert by_name["champion"]["rsum"] > by_name["chance"]["rsum"]
    exp = client.get_experiment_by_name("itm-evaluate")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent[0].info.run_id}
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=parent[0].info.run_id, artifact_path="leaderboard.csv")
    )
    assert list(table["matcher"]) == [r["matcher"] for r in board]
    # figures: a recall@K curve per matcher and for all, a retrieval example grid per matcher
    assert {"recall_at_k.png", "leaderboard.csv"} <= {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    for child in children:
        assert {"recall_at_k.png", "retrieval_examples.png"} <= {
            a.path for a in client.list_artifacts(child.info.run_id)
        }
    assert {"recall_at_k.png", "retrieval_examples.png"} <= {a.path for a in client.list_artifacts(second["run_id"])}
    # system metrics (MLflow samples CPU and memory while a top-level run is open)
    assert any(key.startswith("system/") for key in client.get_run(parent[0].info.run_id).data.metrics)

    # generate: captions by the champion, a table and a grid in MLflow
    rows = generate(
        GenerateParams(dataset=dataset, num_images=4, generator_options={"bank_options": tiny_shapes_options})
    )["generations"]
    assert len(rows) == 4
    bank = set(create("dataset", "shapes", **tiny_shapes_options).load().split("train").captions)
    assert all(r["caption"] in bank for r in rows)
    gen = client.search_runs([client.get_experiment_by_name("itm-generate").experiment_id])[0]
    names = {a.path for a in client.list_artifacts(gen.info.run_id)}
    assert {"generations.csv", "caption_grid.png"} <= names

    # every flow run left a link artifact pointing at its MLflow run (Prefect stores links as markdown)
    import anyio
    from prefect import get_client

    async def artifact_texts():
        async with get_client() as c:
            return [str(a.data) for a in await c.read_artifacts()]

    texts = anyio.run(artifact_texts)
    for run_id in (first["run_id"], second["run_id"], parent[0].info.run_id, gen.info.run_id):
        assert any(f"/runs/{run_id})" in t and "MLflow run" in t for t in texts), run_id


def test_prefect_artifacts_and_cached_encoding(prefect_server, mlflow_store, tiny_shapes_options):
    """A training progress artifact and a results table; the second identical retrain finds the
    encoding step in Prefect's cache (its task runs end in the Cached state)."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.retrain import retrain

    params = RetrainParams(
        dataset=DatasetParams(options=tiny_shapes_options),
        training=ContrastiveTraining(epochs=2, batch_size=16),
        **CLASSIC,
    )
    first = retrain.with_options(name="retrain")(params, return_state=True)
    second = retrain(params, return_state=True)

    async def runs_and_artifacts(flow_run_id):
        async with get_client() as c:
            tasks = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            artifacts = await c.read_artifacts()
            return tasks, [a for a in artifacts if a.flow_run_id == flow_run_id]

    tasks, artifacts = anyio.run(runs_and_artifacts, first.state_details.flow_run_id)
    encodes = [t for t in tasks if t.name.startswith("encode")]
    assert len(encodes) == 3
    kinds = {a.type for a in artifacts}
    assert {"progress", "markdown"} <= kinds
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress[0].data == pytest.approx(100.0)
    tasks, _ = anyio.run(runs_and_artifacts, second.state_details.flow_run_id)
    assert sorted(t.state.name for t in tasks if t.name.startswith("encode")) == ["Cached"] * 3


def test_itm_run_validates_params_file(prefect_server, mlflow_store, tmp_path, tiny_shapes_options):
    from cli.main import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  name: shapes\n  on_bad_image: ignore\ntraining:\n  epochs: 0\n")
    result = CliRunner().invoke(app, ["run", "retrain", "--params", str(bad)])
    assert result.exit_code == 2
    assert (
        "bad.yaml" in result.output and "dataset.on_bad_image" in result.output and "training.epochs" in result.output
    )

    result = CliRunner().invoke(app, ["run", "nonsense"])
    assert result.exit_code == 2 and "retrain, evaluate, generate, fusion-benchmark, explain" in " ".join(
        result.output.split()
    )
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "One of: retrain, evaluate, generate," in result.output
    assert all(name in result.output for name in ("retrain", "evaluate", "generate", "fusion-benchmark", "explain"))

    missing_model = tmp_path / "eval.json"
    missing_model.write_text(
        json.dumps(
            {"dataset": {"options": tiny_shapes_options}, "matchers": [{"model_uri": "models:/no-such-model@champion"}]}
        )
    )
    result = CliRunner().invoke(app, ["run", "evaluate", "--params", str(missing_model)])
    assert result.exit_code == 2 and "no-such-model" in result.output

    good = tmp_path / "eval.yaml"
    good.write_text(
        "dataset:\n  options: " + json.dumps(tiny_shapes_options) + "\n"
        "matchers:\n  - image_encoder: {name: color-histogram}\n    text_encoder: {name: tfidf}\n    untrained_heads: "
        "true\n"
    )
    result = CliRunner().invoke(app, ["run", "evaluate", "--params", str(good)])
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.stdout[result.stdout.index("[") :])[0]["matcher"]
        == "color-histogram + tfidf (untrained heads)"
    )


def test_user_manifest_with_bad_images(prefect_server, mlflow_store, tmp_path):
    """A user's CSV with a corrupt and a missing image: skipped and reported, or a failure naming the file."""
    from PIL import Image

    from flows.evaluate import evaluate
    from itm_core.data import DataError

    rows = []
    for i, colour in enumerate(["red", "green", "blue", "yellow", "white", "black"]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{colour}.png")
        rows.append({"image": f"{colour}.png", "caption": f"a {colour} square", "split": "train" if i < 3 else "test"})
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows += [
        {"image": "broken.png", "caption": "broken", "split": "test"},
        {"image": "gone.png", "caption": "gone", "split": "test"},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    dataset = DatasetParams(name="manifest", options={"path": str(tmp_path / "pairs.csv")}, on_bad_image="skip")
    ref = MatcherRef(
        image_encoder=ComponentParams(name="color-histogram"),
        text_encoder=ComponentParams(name="tfidf"),
        untrained_heads=True,
    )

    board = evaluate(EvaluateParams(dataset=dataset, matchers=[ref]))
    assert len(board) == 1
    client = MlflowClient()
    run = [
        r
        for r in client.search_runs([client.get_experiment_by_name("itm-evaluate").experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ][0]
    assert run.data.params["data.skipped_images"] == "2" and run.data.params["data.test.images"] == "3"
    report = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="skipped_images.csv")
    )
    assert sorted(report["path"]) == ["broken.png", "gone.png"]

    with pytest.raises(DataError, match="broken.png"):
        evaluate(EvaluateParams(dataset=dataset.model_copy(update={"on_bad_image": "fail"}), matchers=[ref]))


def test_generate_text_to_image_plugin(prefect_server, mlflow_store, tiny_shapes_options):
    """A text-to-image generator from a plugin: prompts from the split, images into a grid artifact."""
    from PIL import Image

    from flows.generate import generate
    from itm_core import hookimpl
    from itm_core.components import Generator
    from itm_core.contract.plugins import temporary_plugin

    class Painter(Generator):
        task = "text-to-image"

        def generate(self, inputs, **options):
            return [Image.new("RGB", (16, 16), "red" if "red" in p else "gray") for p in inputs]

    class PainterPlugin:
        @hookimpl
        def register_generators(self, register):
            register("painter", Painter, task="text-to-image")

    with temporary_plugin(PainterPlugin(), "painter"):
        rows = generate(
            GenerateParams(generator="painter", dataset=DatasetParams(options=tiny_shapes_options), num_images=3)
        )["generations"]
    assert len(rows) == 3 and all(r["prompt"] for r in rows)
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("itm-generate").experiment_id])[0]
    assert {"generations.csv", "image_grid.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_demo_command_on_tiny_shapes(prefect_server, mlflow_store):
    """`itm demo --dataset shapes` end to end (small data; the README runs the default, scenes): two
    retrains, a leaderboard of four, captions from a caption bank of shapes, a champion."""
    from cli.main import app

    result = CliRunner().invoke(app, ["demo", "--dataset", "shapes", "--train-images", "40", "--eval-images", "12"])
    assert result.exit_code == 0, result.output
    for text in (
        "ITM demo",
        "champion",
        "untrained",  # a narrow terminal wraps the label over lines
        "(chance)",
        "classic",
        "mlflow ui --backend-store-uri",
        "bleu4",
        "cider",
    ):
        assert text in result.output
    client = MlflowClient()
    assert client.get_model_version_by_alias("itm-matcher", "champion") is not None
    assert {e.name for e in client.search_experiments()} >= {"itm-retrain", "itm-evaluate", "itm-generate"}


def test_explain_flow_and_cli(prefect_server, mlflow_store, tiny_shapes_options, tmp_path):
    """The occlusion map finds the shape; the colour and shape words matter more than filler words."""
    from PIL import Image, ImageDraw

    from cli.main import app
    from flows.explain import explain
    from flows.retrain import retrain
    from itm_core import create
    from itm_core.config import ExplainParams

    dataset = DatasetParams(options={**tiny_shapes_options, "n_train": 200})
    retrain(RetrainParams(dataset=dataset, training=ContrastiveTraining(epochs=10, batch_size=32), **CLASSIC))
    # a red square in the top-left cell of a 2x2 grid, on the shapes background grey
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((4, 4, 28, 28), fill=(220, 30, 30))
    path = tmp_path / "red.png"
    image.save(path)
    result = explain(ExplainParams(image=str(path), text="a picture of a red square", grid=2, dataset=dataset))
    heat = result["heat"]
    assert heat[0][0] == max(max(row) for row in heat) and heat[0][0] > 0  # hiding the square costs the most
    assert result["words"]["red"] > max(result["words"]["a"], result["words"]["of"])
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.metrics["score"] == pytest.approx(result["score"])
    assert {"explanation.png", "word_contributions.csv", "occlusion_heat.csv"} <= {
        a.path for a in MlflowClient().list_artifacts(run.info.run_id)
    }

    # the documented default: the first test pair of `dataset`, logged once with the values used
    default = explain(ExplainParams(dataset=dataset, grid=2))
    first = create("dataset", "shapes", **dataset.options).load().split("test")
    assert default["text"] == first.captions_of(0)[0] and default["image"] == str(first.image_path(0))
    params = MlflowClient().get_run(default["run_id"]).data.params
    assert params["text"] == default["text"] and params["image"] == default["image"]
    long_text = "a red square " * 60  # over 500 characters: logged whole, once
    assert (
        MlflowClient()
        .get_run(explain(ExplainParams(dataset=dataset, grid=2, text=long_text))["run_id"])
        .data.params["text"]
        == long_text
    )

    out = CliRunner().invoke(app, ["explain", "--image", str(path), "--text", "a red square", "--grid", "2"])
    assert out.exit_code == 0, out.output
    assert "red" in out.output and "explanation.png" in out.output
    out = CliRunner().invoke(app, ["explain", "--image", str(tmp_path / "none.png"), "--text", "x"])
    assert out.exit_code == 2 and "image file not found" in out.output


def test_flow_run_url_tag_only_when_it_is_a_link(monkeypatch):
    """Without a Prefect UI, Prefect's ui_url reads "None/flow-runs/..."; that is not tagged as a link."""
    from prefect.runtime import flow_run

    from itm_core.ops.tracking import prefect_context

    for name, value in (
        ("id", "0b6f"),
        ("name", "calm-fox"),
        ("flow_name", "retrain"),
        ("ui_url", "None/flow-runs/flow-run/0b6f"),
    ):
        monkeypatch.setattr(flow_run, name, value, raising=False)
    assert prefect_context() == {
        "prefect.flow_run_id": "0b6f",
        "prefect.flow_run_name": "calm-fox",
        "prefect.flow_name": "retrain",
    }
    monkeypatch.setattr(flow_run, "ui_url", "http://127.0.0.1:4200/runs/flow-run/0b6f", raising=False)
    assert prefect_context()["prefect.flow_run_url"] == "http://127.0.0.1:4200/runs/flow-run/0b6f"


def test_orphaned_run_is_closed_and_a_new_run_opened(mlflow_store):
    """A run left RUNNING by a process that is gone is marked FAILED, and the next run is a new one."""
    import socket
    import subprocess
    import sys

    from itm_core.ops.tracking import tracked_run

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client = MlflowClient()
    experiment = client.create_experiment("orphans")
    orphan = client.create_run(
        experiment, tags={"itm.host": socket.gethostname(), "itm.pid": str(gone.pid), "itm.pid_started": "1.0"}
    )
    with tracked_run("orphans", "next", {"a": 1}) as run:
        assert run.info.run_id != orphan.info.run_id
        assert client.get_run(orphan.info.run_id).info.status == "FAILED"
        assert client.get_run(run.info.run_id).data.tags["itm.pid_started"]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
