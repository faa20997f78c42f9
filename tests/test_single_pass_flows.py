"""Every flow checks an image in the pass that reads it: no separate check over the whole dataset
first, the same skip report and one-line error, and images a flow does not use are never opened."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from itm_core.config import (
    ComponentParams,
    DatasetParams,
    EvaluateParams,
    ExplainParams,
    FusionBenchmarkParams,
    GenerateParams,
    MatcherRef,
)
from itm_core.data import DataError, load_manifest, read_images
from itm_core.encode import loader

pytestmark = pytest.mark.slow  # subprocesses, flows or pip


MEMORY = "<bytes in memory>"
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "gray", "brown", "cyan"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Four images per split; the test split starts with a truncated file."""
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (24, 24), colour).save(data / f"{colour}.png")
        rows.append(
            {"image": f"{colour}.png", "caption": f"a {colour} square", "split": ["train", "val", "test"][i // 4]}
        )
    (data / "bad.png").write_bytes((data / "red.png").read_bytes()[:50])
    rows.insert(8, {"image": "bad.png", "caption": "a broken square", "split": "test"})
    pd.DataFrame(rows).to_csv(data / "pairs.csv", index=False)
    return data


@pytest.fixture
def dataset(folder: Path) -> DatasetParams:
    return DatasetParams(name="manifest", options={"path": str(folder / "pairs.csv")}, on_bad_image="skip")


@pytest.fixture
def opened(folder: Path, monkeypatch) -> Counter:
    """How often each image of ``folder`` is decoded (``PIL.Image.open``), by file name; decodes of bytes
    already read (as the encoding pass does, after hashing them) count under ``MEMORY``."""
    counts: Counter = Counter()
    real = Image.open

    def counting(fp, *args, **kwargs):
        if isinstance(fp, (str, Path)):
            if Path(fp).parent.resolve() == folder.resolve():
                counts[Path(fp).name] += 1
        else:
            counts[MEMORY] += 1
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return counts


@pytest.fixture
def read_by_encoder(folder: Path, monkeypatch) -> Counter:
    """How often the encoding pass reads each image file of ``folder``."""
    counts: Counter = Counter()
    real = loader.read_image
    monkeypatch.setattr(
        loader, "read_image", lambda path, *a, **k: counts.update([Path(path).name]) or real(path, *a, **k)
    )
    return counts


def _split_names(split: str) -> set[str]:
    return {f"{c}.png" for c in COLOURS[{"train": 0, "val": 4, "test": 8}[split] :][:4]} | (
        {"bad.png"} if split == "test" else set()
    )


def _latest_top_run(experiment: str):
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], order_by=["attributes.start_time DESC"]
    )
    return next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)


def test_read_images_decodes_once_up_to_a_limit(folder):
    data = load_manifest(folder / "pairs.csv").split("test")
    kept, images, skipped = read_images(data, "skip", limit=2)
    assert kept.images == ["pink.png", "gray.png"] and [s.path for s in skipped] == ["bad.png"]
    assert [im.getpixel((0, 0)) for im in images] == [(255, 192, 203), (128, 128, 128)]
    assert kept.captions == ["a pink square", "a gray square"]
    with pytest.raises(DataError, match="bad.png: corrupt or truncated.*on_bad_image to 'skip'"):
        read_images(data, "fail")


def test_evaluate_checks_images_in_the_first_matchers_pass(
    dataset, opened, read_by_encoder, prefect_server, mlflow_store
):
    from flows.evaluate import evaluate

    image = ComponentParams(name="color-histogram", options={"bins": 2, "grid": 1})
    matchers = [
        MatcherRef(image_encoder=image, text_encoder=ComponentParams(name=t), untrained_heads=True)
        for t in ("bow", "tfidf")
    ]
    board = evaluate(EvaluateParams(dataset=dataset, matchers=matchers))
    assert len(board) == 2
    # the first matcher's pass read each test image once (the bad one too); the second found them in the cache
    assert read_by_encoder == Counter({name: 1 for name in _split_names("test")})
    # nothing outside the split evaluated is opened: there is no check pass over the dataset
    assert not set(opened) - _split_names("test") - {MEMORY}
    run = _latest_top_run("itm-evaluate")
    assert run.data.params["data.skipped_images"] == "1" and run.data.params["data.test.images"] == "4"
    report = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="skipped_images.csv")
    )
    assert list(report["path"]) == ["bad.png"]
    with pytest.raises(DataError, match="bad.png"):
        evaluate(EvaluateParams(dataset=dataset.model_copy(update={"on_bad_image": "fail"}), matchers=matchers[:1]))


def test_fusion_benchmark_encodes_and_checks_each_image_once(
    dataset, opened, read_by_encoder, prefect_server, mlflow_store
):
    from flows.fusion_benchmark import encode_all
    from flows.tasks import load_data

    params = FusionBenchmarkParams(
        dataset=dataset,
        image_encoder=ComponentParams(name="color-histogram", options={"bins": 2, "grid": 1}),
        text_encoder=ComponentParams(name="bow"),
        fusions=["bilinear"],
    )
    data, _ = load_data.fn(params.dataset, check=False)
    features, skipped = encode_all.fn(params, {s: data.split(s) for s in ("train", "val", "test")}, ["bilinear"])
    every = {name for s in ("train", "val", "test") for name in _split_names(s)}
    assert read_by_encoder == Counter({name: 1 for name in every})
    assert opened == Counter({MEMORY: len(every)})  # each decoded once, from the bytes that pass read: no check pass
    assert [s.path for s in skipped] == ["bad.png"]
    assert features["test"].data.images == ["pink.png", "gray.png", "brown.png", "cyan.png"]
    assert features["test"].image.pooled.shape[0] == 4


def test_explain_opens_only_the_image_it_explains(dataset, opened, prefect_server, mlflow_store):
    from flows.explain import explain

    ref = MatcherRef(
        image_encoder=ComponentParams(name="color-histogram", options={"bins": 2, "grid": 1}),
        text_encoder=ComponentParams(name="bow"),
        untrained_heads=True,
    )
    result = explain(
        ExplainParams(
            dataset=dataset, matcher=ref, explainers=[{"name": "occlusion", "options": {"grid": 2}}, "word-deletion"]
        )
    )
    assert Path(result["image"]).name == "pink.png" and result["text"] == "a pink square"  # the first usable test image
    assert opened == Counter({"bad.png": 1, "pink.png": 1})


def test_generate_opens_only_the_images_it_captions(dataset, opened, prefect_server, mlflow_store):
    from flows.generate import generate
    from itm_core import hookimpl
    from itm_core.components import Generator
    from itm_core.contract.plugins import temporary_plugin

    class Namer(Generator):
        task = "image-to-text"

        def generate(self, inputs, **options):
            return [f"a {'pink' if im.getpixel((0, 0)) == (255, 192, 203) else 'other'} square" for im in inputs]

    class NamerPlugin:
        @hookimpl
        def register_generators(self, register):
            register("namer", Namer, task="image-to-text")

    with temporary_plugin(NamerPlugin(), "namer"):
        result = generate(GenerateParams(generator="namer", dataset=dataset, num_images=2))
    assert [Path(r["image"]).name for r in result["generations"]] == ["pink.png", "gray.png"]
    assert [r["caption"] for r in result["generations"]] == ["a pink square", "a other square"]
    assert opened == Counter({"bad.png": 1, "pink.png": 1, "gray.png": 1})
    run = _latest_top_run("itm-generate")
    assert run.data.params["data.skipped_images"] == "1"
