"""Explainers against scorers whose truth is known, the faithfulness measures, and both flows end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from itm_core import create
from itm_core.contract.explaining import Attribution, PairScorer
from itm_core.judge.evaluation import EncoderPair
from itm_core.judge.explain import explain_with
from itm_core.judge.faithfulness import area, cell_heat, judge, named_object, points_at, random_reference


class Redness:
    """Image features: how red the image is on average, with gradients, and a conv layer for Grad-CAM."""

    modality, dim = "image", 2

    def __init__(self):
        self.cam_layer = torch.nn.Conv2d(3, 3, 1, bias=False)
        torch.nn.init.eye_(self.cam_layer.weight[:, :, 0, 0])

    def preprocess(self, image):
        return np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32).transpose(2, 0, 1) / 255.0

    def encode_differentiable(self, x):
        x = self.cam_layer(x)
        red = (x[:, 0] - (x[:, 1] + x[:, 2]) / 2).clamp(min=0).mean(dim=(1, 2))
        return torch.stack([red, torch.full_like(red, 0.05)], 1)

    def encode(self, items):
        with torch.no_grad():
            return self.encode_differentiable(torch.from_numpy(np.stack([self.preprocess(i) for i in items])))


class RedWords:
    """Text features: whether the text says "red"."""

    modality, dim = "text", 2

    def encode(self, items):
        return torch.tensor([[float("red" in t.lower().split()), 0.0] for t in items])


class Dot:
    @staticmethod
    def pairwise(a, b):
        return (a * b).sum(-1)


def red_corner() -> Image.Image:
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((4, 4, 27, 27), fill=(230, 20, 20))  # the top-left cell of a 2 x 2 raster
    return image


SCORER = PairScorer(EncoderPair(Redness(), RedWords(), Dot()))
REGION = {"cx": 16 / 64, "cy": 16 / 64, "r": 12 / 64}
TEXT = "a big red square in a corner"


@pytest.mark.parametrize(
    "name, options",
    [
        ("occlusion", {"grid": 4}),
        ("lime", {"num_samples": 80, "segments": 16}),
        ("shap", {"nsamples": 80, "segments": 16}),
        ("integrated-gradients", {"steps": 8}),
        ("grad-cam", {}),
    ],
)
def test_image_explainers_find_the_red_square(name, options):
    found = explain_with(create("explainer", name, **options), name, SCORER, red_corner(), TEXT)
    assert found.heat is not None and points_at(found.heat, REGION), f"{name} peaks elsewhere"
    assert found.seconds > 0 and found.explainer == name


@pytest.mark.parametrize(
    "name, options",
    [("word-deletion", {}), ("lime", {"num_samples": 60, "segments": 8}), ("shap", {"nsamples": 60, "segments": 8})],
)
def test_text_explainers_find_the_word_red(name, options):
    found = explain_with(create("explainer", name, **options), name, SCORER, red_corner(), TEXT)
    assert found.top_words(1)[0][0] == "red"


class NoGradients:
    modality, dim = "image", 2

    def encode(self, items):
        return torch.ones(len(items), 2)


def test_gradient_explainers_say_what_they_need():
    scorer = PairScorer(EncoderPair(NoGradients(), RedWords(), Dot()))
    for name in ("integrated-gradients", "grad-cam"):
        with pytest.raises(
            ValueError,
            match=f"{name}' needs gradients through the image encoder, and NoGradients has no encode_differentiable",
        ):
            create("explainer", name).explain(scorer, red_corner(), TEXT)


def test_faithful_maps_beat_random_and_misleading_ones():
    image = red_corner()
    true_map = Attribution(
        "true",
        0.0,
        heat=np.array([[1.0, 0.0], [0.0, 0.0]]),
        words=TEXT.split(),
        word_scores=[float(w == "red") for w in TEXT.split()],
    )
    wrong_map = Attribution(
        "wrong",
        0.0,
        heat=np.array([[0.0, 1.0], [1.0, 1.0]]),
        words=TEXT.split(),
        word_scores=[-float(w == "red") for w in TEXT.split()],
    )
    good, bad = (
        judge(SCORER, image, TEXT, true_map, grid=4, steps=4, region=REGION),
        judge(SCORER, image, TEXT, wrong_map, grid=4, steps=4, region=REGION),
    )
    chance = random_reference(SCORER, image, TEXT, seed=0, grid=4, steps=4, region=REGION)
    assert good.deletion < chance.deletion <= bad.deletion and good.insertion > bad.insertion
    assert good.word_deletion < bad.word_deletion and good.word_insertion > bad.word_insertion
    assert good.pointing is True and bad.pointing is False


def test_measures_by_hand():
    assert area([1.0, 0.0]) == 0.5 and area([1.0, 1.0, 1.0]) == 1.0
    assert np.allclose(cell_heat(np.arange(16, dtype=float).reshape(4, 4), 2), [[2.5, 4.5], [10.5, 12.5]])
    assert not points_at(np.zeros((4, 4)), REGION)  # a flat map points nowhere
    assert named_object([{"cx": 0.5, "cy": 0.5, "r": 0.1, "shape": "star"}]) == {"cx": 0.5, "cy": 0.5, "r": 0.1}
    assert (
        named_object([{"cx": 0.5, "cy": 0.5, "r": 0.1}, {"cx": 0.2, "cy": 0.5, "r": 0.1}]) is None
        and named_object(None) is None
    )


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_explain_and_explain_benchmark_flows(prefect_server, mlflow_store, tiny_shapes_options):
    """Several explainers side by side in one run; the benchmark ranks them, points at single objects,
    and says which explainers a matcher without gradients cannot serve."""
    from mlflow.tracking import MlflowClient

    from flows.explain import explain
    from flows.explain_benchmark import explain_benchmark
    from flows.retrain import retrain
    from itm_core.config import (
        ComponentParams,
        ContrastiveTraining,
        DatasetParams,
        ExplainBenchmarkParams,
        ExplainParams,
        MatcherRef,
        RetrainParams,
    )

    dataset = DatasetParams(options={**tiny_shapes_options, "n_train": 200, "n_test": 40})
    retrain(
        RetrainParams(
            dataset=dataset,
            training=ContrastiveTraining(epochs=10, batch_size=32),
            image_encoder=ComponentParams(name="color-histogram"),
            text_encoder=ComponentParams(name="tfidf", options={"max_features": 256}),
        )
    )

    result = explain(
        ExplainParams(
            dataset=dataset,
            explainers=[
                {"name": "occlusion", "options": {"grid": 4}},
                "word-deletion",
                {"name": "lime", "options": {"num_samples": 40, "segments": 12}},
                {"name": "shap", "options": {"nsamples": 40, "segments": 12}},
            ],
        )
    )
    assert set(result["explainers"]) == {"occlusion", "word-deletion", "lime", "shap"}
    assert np.asarray(result["heat"]).shape == (4, 4) and set(result["words"]) == set(result["text"].split())
    artifacts = {a.path for a in MlflowClient().list_artifacts(result["run_id"])}
    assert {
        "explanation.png",
        "occlusion_heat.csv",
        "word_contributions.csv",
        "heat_lime.csv",
        "words_lime.csv",
        "heat_shap.csv",
        "words_shap.csv",
    } <= artifacts

    from typer.testing import CliRunner

    from cli.main import app

    out = CliRunner().invoke(app, ["explain", "-e", "word-deletion", "-e", "lime", "-e", "occlusion", "--grid", "2"])
    assert out.exit_code == 0, out.output
    assert "word-deletion" in out.output and "lime" in out.output and "explanation.png" in out.output
    out = CliRunner().invoke(
        app, ["explain", "-e", "grad-cam", "-e", "word-deletion"]
    )  # a colour histogram has no gradients
    assert out.exit_code == 0 and "grad-cam: skipped: needs gradients" in out.output, out.output
    out = CliRunner().invoke(app, ["explain", "-e", "grad-cam"])
    assert out.exit_code == 2 and "no chosen explainer can explain this matcher" in out.output
    out = CliRunner().invoke(app, ["explain", "-e", "limee"])
    assert out.exit_code == 2 and "unknown explainer 'limee'" in out.output and "Did you mean 'lime'" in out.output

    chosen = [
        {"name": "occlusion", "options": {"grid": 4}},
        "word-deletion",
        {"name": "lime", "options": {"num_samples": 40, "segments": 12}},
        {"name": "shap", "options": {"nsamples": 40, "segments": 12}},
        "integrated-gradients",
    ]
    board = explain_benchmark(
        ExplainBenchmarkParams(dataset=dataset, explainers=chosen, pairs=10, single_object=True, grid=4, steps=4)
    )
    rows = {r["explainer"]: r for r in board}
    assert list(rows) == ["occlusion", "word-deletion", "lime", "shap", "integrated-gradients", "random (reference)"]
    assert rows["occlusion"]["pointing_pairs"] == 10 and rows["word-deletion"]["pointing_accuracy"] is None
    # on single shapes, where the colour histogram is the evidence, some explainer points at the object
    assert max(rows[n]["pointing_accuracy"] for n in ("occlusion", "lime", "shap")) >= 0.8
    assert rows["occlusion"]["deletion_auc"] < rows["random (reference)"]["deletion_auc"]
    assert "no encode_differentiable" in rows["integrated-gradients"]["note"]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("itm-explain-benchmark").experiment_id])
    assert sorted(r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags) == [
        "lime",
        "occlusion",
        "shap",
        "word-deletion",
    ]

    # any matcher: untrained heads over towers with gradients serve the gradient explainers
    towers = MatcherRef(
        image_encoder=ComponentParams(name="efficientnet-lite0", options={"image_size": 64}),
        text_encoder=ComponentParams(name="minilm", options={"max_length": 16}),
        untrained_heads=True,
    )
    board = explain_benchmark(
        ExplainBenchmarkParams(
            matcher=towers,
            dataset=dataset,
            explainers=[{"name": "integrated-gradients", "options": {"steps": 4}}, "grad-cam"],
            pairs=2,
            grid=4,
            steps=4,
        )
    )
    assert all(r["deletion_auc"] is not None and r["seconds_per_explanation"] > 0 for r in board[:2])
