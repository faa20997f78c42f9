"""End to end: retrain a captioner and a text-to-image model, register and promote them, run them
through the generate flow and score them, as real Prefect flow runs against a real MLflow store."""

from __future__ import annotations

import base64
import io

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from itm_core.config import (
    CaptioningOptions,
    ComponentParams,
    ContrastiveTraining,
    DatasetParams,
    GenerateParams,
    RetrainParams,
)
from itm_core.data import DataError
from itm_core.models.text_to_image import CVAEOptions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CLASSIC = dict(
    image_encoder=ComponentParams(name="color-histogram"),
    text_encoder=ComponentParams(name="tfidf", options={"max_features": 256}),
)


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_captioner_and_text_to_image_through_retrain_and_generate(
    prefect_server, mlflow_store, tiny_shapes_options, tmp_path
):
    from flows.generate import generate
    from flows.retrain import retrain

    dataset = DatasetParams(options=tiny_shapes_options)
    client = MlflowClient()
    # text to image before any matcher exists: the error says to train one, or which option picks another
    with pytest.raises(LookupError, match=r"Train a matcher first \(`itm run retrain`\), or set text_to_image.matcher"):
        retrain(RetrainParams(task="text-to-image", dataset=dataset, **CLASSIC))
    # a matcher first: it scores clipscore, alignment and r_precision
    retrain(RetrainParams(dataset=dataset, training=ContrastiveTraining(epochs=3, batch_size=16), **CLASSIC))

    # captioning: trained, tested with BLEU, registered as itm-captioner, samples logged during training
    captioning = CaptioningOptions(n_embd=32, n_layer=1, n_head=2, epochs=3, batch_size=32, sample_every=2, num_beams=2)
    first = retrain(RetrainParams(task="captioning", dataset=dataset, captioning=captioning, **CLASSIC))
    second = retrain(
        RetrainParams(
            task="captioning", dataset=dataset, captioning=captioning.model_copy(update={"epochs": 4}), **CLASSIC
        )
    )
    assert first["promoted"] and first["model_version"] == "1" and second["model_version"] == "2"
    assert {"bleu1", "bleu4"} <= set(first["test"])
    # 16 test images are too few to replace a champion by evidence: v1 stays, and the decision says why
    champion = client.get_model_version_by_alias("itm-captioner", "champion")
    assert str(champion.version) == "1" and not second["promoted"]
    run = client.get_run(second["run_id"])
    assert run.data.tags["promotion.metric"] == "bleu4" and run.data.tags["promotion.n"] == "16"
    assert second["decision"].startswith("kept champion v1 over v2: bleu4 ")
    assert "on 16 test images: too few to replace a champion" in run.data.tags["promotion.decision"]
    assert (
        client.get_model_version("itm-captioner", "2").tags["promotion.interval"] == run.data.tags["promotion.interval"]
    )
    assert run.data.tags["prefect.flow_name"] == "retrain" and "champion_test_bleu4" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3, 4][
        : len(client.get_metric_history(run.info.run_id, "val_loss"))
    ]
    assert {"samples/epoch_001.png", "samples/epoch_002.png"} <= artifacts(client, run.info.run_id)

    # the registered captioner is a pyfunc: image paths in, captions out
    from itm_core import create

    test = create("dataset", "shapes", **tiny_shapes_options).load().split("test")
    captions = mlflow.pyfunc.load_model("models:/itm-captioner@champion").predict(
        pd.DataFrame({"image": [base64.b64encode(test.image_path(i).read_bytes()).decode() for i in (0, 1)]})
    )
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions["caption"])

    # generate runs it and scores it with reference metrics and the reference-free clipscore
    result = generate(
        GenerateParams(
            generator="trained-captioner",
            dataset=dataset,
            num_images=8,
            metrics=[ComponentParams(name="bleu"), ComponentParams(name="clipscore")],
        )
    )
    rows = result["generations"]
    assert len(rows) == 8 and all(r["caption"] for r in rows) and result["generated"] == 8 and result["notes"] == []
    gen_run = mlflow.search_runs(experiment_names=["itm-generate"], order_by=["start_time DESC"], output_format="list")[
        0
    ]
    assert {"bleu4", "clipscore"} <= set(gen_run.data.metrics) and 0 <= gen_run.data.metrics["clipscore"] <= 2.5
    # the printed result carries the scores themselves
    assert (
        result["scores"]["bleu4"] == pytest.approx(gen_run.data.metrics["bleu4"])
        and gen_run.info.run_id == result["run_id"]
    )
    # more images asked than the split has: all of them, and a note that says so
    result = generate(GenerateParams(generator="trained-captioner", dataset=dataset, num_images=100))
    test_images = tiny_shapes_options["n_test"]
    assert result["generated"] == test_images
    assert (
        "num_images is 100 but split 'test'" in result["notes"][0] and f"has {test_images} images" in result["notes"][0]
    )
    assert MlflowClient().get_run(result["run_id"]).data.tags["generate.notes"] == result["notes"][0]

    # text to image: the conditional VAE at 16 pixels, scored by r_precision with the champion matcher
    t2i = CVAEOptions(resolution=16, epochs=3, batch_size=16, sample_every=2, test_prompts=8, candidates=4)
    drawn = retrain(RetrainParams(task="text-to-image", dataset=dataset, text_to_image=t2i, **CLASSIC))
    assert drawn["promoted"] and {"r_precision", "r_precision_chance", "alignment"} <= set(drawn["test"])
    assert drawn["test"]["r_precision_chance"] == pytest.approx(0.25)
    run = client.get_run(drawn["run_id"])
    assert run.data.tags["promotion.metric"] == "r_precision"
    assert {"samples/epoch_001.png", "samples/epoch_002.png", "test_samples.png"} <= artifacts(client, run.info.run_id)
    frame = mlflow.pyfunc.load_model("models:/itm-text-to-image@champion").predict(
        pd.DataFrame({"prompt": ["a red circle", "a blue star"]})
    )
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in frame["image"]]
    assert [img.size for img in images] == [(16, 16)] * 2

    # generate: prompts from a file, scored by alignment and r_precision; a split's prompts also by fd and kid
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na big blue star at the top\na green square on the left\n")
    result = generate(
        GenerateParams(
            generator="trained-text-to-image",
            prompts_file=str(prompts),
            dataset=dataset,
            metrics=[
                ComponentParams(name="alignment"),
                ComponentParams(name="r_precision", options={"candidates": 10}),
            ],
        )
    )
    rows = result["generations"]
    assert [r["prompt"] for r in rows] == ["a red circle", "a big blue star at the top", "a green square on the left"]
    gen_run = mlflow.search_runs(experiment_names=["itm-generate"], order_by=["start_time DESC"], output_format="list")[
        0
    ]
    assert {"alignment", "r_precision"} <= set(gen_run.data.metrics)
    # explicit prompts: the 9 distractors come from the split's captions (from three prompts alone, chance would be 1/3)
    assert result["scores"]["r_precision_chance"] == pytest.approx(0.1)
    assert "distractors from the captions of split 'test'" in result["notes"][0]
    assert {"images/0000.png", "images/0002.png", "image_grid.png", "generations.csv"} <= artifacts(
        client, gen_run.info.run_id
    )
    generate(
        GenerateParams(
            generator="trained-text-to-image",
            dataset=dataset,
            num_images=8,
            generator_options={"size": 64},
            metrics=[
                ComponentParams(name="fd", options={"encoder": "color-histogram"}),
                ComponentParams(name="kid", options={"encoder": "color-histogram", "subset_size": 8}),
            ],
        )
    )
    gen_run = mlflow.search_runs(experiment_names=["itm-generate"], order_by=["start_time DESC"], output_format="list")[
        0
    ]
    assert gen_run.data.metrics["fd"] >= 0 and "kid" in gen_run.data.metrics

    # prompts in another script are drawn and reported; an empty prompt is refused by number
    result = generate(GenerateParams(generator="trained-text-to-image", prompts=["赤い丸", "a red circle"]))
    assert result["generated"] == 2 and "1 prompt(s) (0) have no letters in the Latin script" in result["notes"][0]
    with pytest.raises(DataError, match="prompt 1 is empty"):
        generate(GenerateParams(generator="trained-text-to-image", prompts=["a red circle", " "]))

    # wrong combinations fail with what would be accepted
    with pytest.raises(ValueError, match="scored by 'text-to-image' metrics"):
        generate(
            GenerateParams(
                generator="trained-text-to-image", prompts=["a red circle"], metrics=[ComponentParams(name="bleu")]
            )
        )
    with pytest.raises(DataError, match="prompts are for text-to-image generators"):
        generate(GenerateParams(generator="trained-captioner", prompts=["a red circle"]))
    with pytest.raises(DataError, match="cannot read prompts_file"):
        generate(GenerateParams(generator="trained-text-to-image", prompts_file=str(tmp_path / "missing.txt")))


def test_generation_benchmark_trains_every_model_on_one_budget_and_scores_them_side_by_side(
    prefect_server, mlflow_store, tiny_shapes_options, tmp_path
):
    from flows.generation_benchmark import COLUMNS, generation_benchmark
    from itm_core.config import GenerationBenchmarkParams
    from itm_core.models.loop import settle_precision
    from plugins.check_setups import matcher_folder

    matcher = matcher_folder(tmp_path)  # an untrained classic matcher, saved: scoring needs no registry
    tiny = {
        "cvae": {"channels": 8, "latent_dim": 4, "epochs": 2},
        "gan": {"channels": 8, "noise_dim": 8, "epochs": 2},
        "vqvae": {
            "channels": 8,
            "codebook_size": 16,
            "vq_epochs": 1,
            "prior_width": 32,
            "prior_layers": 1,
            "epochs": 2,
        },
        "diffusion": {"block_channels": [16, 32], "sample_steps": 2, "epochs": 1},
    }
    params = GenerationBenchmarkParams(
        dataset=DatasetParams(options=tiny_shapes_options),
        text_encoder=ComponentParams(name="tfidf", options={"max_features": 256}),
        model_options={k: {"resolution": 16, "batch_size": 16, "cond_dim": 16, **v} for k, v in tiny.items()},
        matcher=matcher,
        candidates=4,
        test_prompts=8,
        real_resolution=16,
        attribute_reader={"dataset": tiny_shapes_options, "resolution": 16, "epochs": 2},
        distance_options={"encoder": "color-histogram"},
        captioners=[
            ComponentParams(
                name="retrieval-captioner", options={"matcher": matcher, "bank_options": tiny_shapes_options}
            )
        ],
    )
    rows = generation_benchmark(params)
    assert [r["model"] for r in rows] == ["real test images (16 px)", "cvae", "gan", "vqvae", "diffusion"]
    for row in rows[1:]:
        assert row["r_precision_chance"] == pytest.approx(0.25) and 0 <= row["r_precision"] <= 1
        assert (
            row["parameters"] > 0
            and row["resolution"] == 16
            and row["train_seconds"] > 0
            and row["sample_seconds_per_image"] > 0
        )
        assert row["fd"] >= 0 and all(
            0 <= row[f"attr_{a}"] <= 1 for a in ("color", "shape", "size", "position", "count", "all")
        )
    assert rows[2]["epochs"] == 2 and rows[3]["epochs"] == 2 and rows[4]["epochs"] == 1
    # the cvae trains in bfloat16 where this CPU has the instructions for it, the others in float32
    assert [r["precision"] for r in rows[1:]] == [settle_precision("auto"), "fp32", "fp32", "fp32"]
    # the reference row: real images, scored by the same reader (its own accuracy) and matcher
    assert rows[0]["attr_all"] == pytest.approx(rows[0]["reader_all"])

    client = MlflowClient()
    parent = next(
        r
        for r in mlflow.search_runs(experiment_names=["itm-generation-benchmark"], output_format="list")
        if "mlflow.parentRunId" not in r.data.tags
    )
    assert {"generation_leaderboard.csv", "samples_by_model.png"} <= artifacts(client, parent.info.run_id)
    board = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path="generation_leaderboard.csv", dst_path=str(tmp_path / "b")
        )
    )
    assert list(board.columns) == COLUMNS and len(board) == 5
    captions = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path="caption_leaderboard.csv", dst_path=str(tmp_path / "c")
        )
    )
    assert (
        captions["captioner"].tolist() == ["retrieval-captioner"]
        and 0 <= captions["bleu4"][0] <= 1
        and captions["clipscore"][0] >= 0
    )
    children = mlflow.search_runs(
        experiment_names=["itm-generation-benchmark"],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    assert sorted(c.data.tags["mlflow.runName"] for c in children) == [
        "cvae",
        "diffusion",
        "gan",
        "retrieval-captioner",
        "vqvae",
    ]
    for child in (c for c in children if c.data.tags["mlflow.runName"] != "retrieval-captioner"):
        assert "samples.png" in artifacts(client, child.info.run_id) and "r_precision" in child.data.metrics

    # options are checked per model before anything runs
    with pytest.raises(ValueError, match=r"model_options.vqvae: .*epochs \(2\) must be more than vq_epochs \(5\)"):
        GenerationBenchmarkParams(models=["vqvae"], model_options={"vqvae": {"epochs": 2, "vq_epochs": 5}})
    with pytest.raises(ValueError, match=r"model_options names \['gan'\], which are not among models"):
        GenerationBenchmarkParams(models=["cvae"], model_options={"gan": {}})
