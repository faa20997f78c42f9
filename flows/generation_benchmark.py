"""The ``generation-benchmark`` flow: every text-to-image model trained on the same data, seed and
budget, scored on the same test prompts, one leaderboard."""

from __future__ import annotations

import time
from typing import Any

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.retrain_generation import require_diffusers, require_matcher, text_features
from flows.tasks import load_data, log_dataset, log_leaderboard, read_checked, without_skipped
from itm_core.config import ComponentParams, GenerationBenchmarkParams, RetrainParams
from itm_core.contract.components import Encoder
from itm_core.contract.registry import create
from itm_core.encode.embed import EmbeddingCache
from itm_core.errors import ParamsError
from itm_core.judge.evaluation import build_encoder
from itm_core.judge.intervals import with_bounds
from itm_core.ops.plots import log_grid
from itm_core.ops.tracking import tracked_flow, tracked_run
from itm_core.progress import Tracker, scope

INTERVALS = ("r_precision", "alignment")  # per prompt, so they get bootstrap intervals over the prompts
COLUMNS = [
    "model",
    "r_precision",
    "r_precision_low",
    "r_precision_high",
    "r_precision_chance",
    "alignment",
    "alignment_low",
    "alignment_high",
    "fd",
    "kid",
    "attr_color",
    "attr_shape",
    "attr_size",
    "attr_position",
    "attr_count",
    "attr_all",
    "reader_all",
    "parameters",
    "resolution",
    "epochs",
    "train_seconds",
    "sample_seconds_per_image",
    "stopped",
    "precision",
]
GRID = 16


def model_params(params: GenerationBenchmarkParams, name: str) -> RetrainParams:
    """The retrain parameters of one model: the shared budget, then the model's own options."""
    t2i = {
        "model": name,
        "seed": params.seed,
        "time_limit_s": params.time_limit_s,
        "matcher": params.matcher,
        "candidates": params.candidates,
        "test_prompts": params.test_prompts,
        **params.model_options.get(name, {}),
    }
    return RetrainParams(
        task="text-to-image", dataset=params.dataset, text_encoder=params.text_encoder, text_to_image=t2i
    )


def score(
    images: list[Any], prompts: list[str], test: Any, reference: list[Any] | None, params: GenerationBenchmarkParams
) -> dict[str, float]:
    """Every metric of the leaderboard for ``images`` drawn for ``prompts`` (fd and kid against
    ``reference`` when given)."""
    equivalents = test.captions_by_image()
    ranked = create(
        "metric", "r_precision", matcher=params.matcher, candidates=params.candidates, seed=params.seed
    ).units(images=images, prompts=prompts, distractors=test.captions, equivalents=equivalents[: len(prompts)])
    aligned = create("metric", "alignment", matcher=params.matcher).units(images=images, prompts=prompts)
    values = with_bounds(ranked.join(aligned), INTERVALS)
    for name in ("fd", "kid") if reference is not None else ():
        values.update(
            create("metric", name, **params.distance_options).compute(images=images, reference_images=reference)
        )
    if params.attribute_reader is not None:
        values.update(
            create("metric", "attribute_accuracy", **params.attribute_reader).compute(images=images, prompts=prompts)
        )
    return values


@task(name="train-and-score", cache_policy=NO_CACHE)
def run_model(
    name: str, params: GenerationBenchmarkParams, data: dict[str, Any], encoder: Encoder, cache: EmbeddingCache
) -> dict[str, Any]:
    """One model in a nested MLflow run: trained with the shared budget, its test images scored, a grid logged."""
    from itm_core.models.text_to_image import images_to_tensor, train_text_to_image, uses_tokens

    run = model_params(params, name)
    t = run.text_to_image
    require_diffusers(name, "generation-benchmark: model")
    tokens = uses_tokens(t, encoder)
    features = {s: text_features(encoder, d, cache, tokens) for s, d in data["splits"].items() if s != "test"}
    images = {s: images_to_tensor(data["images"][s], t.resolution) for s in ("train", "val")}
    with tracked_run(params.experiment, name, {"model": name, **t.model_dump()}, nested=True):

        def on_epoch(epoch: int, metrics: dict[str, float], model: Any) -> None:  # the loop prints progress
            mlflow.log_metrics(metrics, step=epoch)

        model, result = train_text_to_image(
            run.text_encoder.model_dump(),
            images["train"],
            features["train"],
            images["val"],
            features["val"],
            t,
            on_epoch,
        )
        model.encoder = encoder
        prompts = data["prompts"]
        start = time.perf_counter()
        generated = model.generate(prompts, seed=params.seed)
        sample_seconds = (time.perf_counter() - start) / max(1, len(prompts))
        reference = images_to_tensor_images(data["reference"], t.resolution)
        values = score(generated, prompts, data["splits"]["test"], reference, params)
        row = {
            "model": name,
            **values,
            "parameters": sum(p.numel() for p in model.model.parameters()),
            "resolution": t.resolution,
            "epochs": len(result.history),
            "train_seconds": result.seconds,
            "sample_seconds_per_image": sample_seconds,
            "stopped": result.stopped,
            "precision": model.config.precision,
        }
        mlflow.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, (int, float))})
        mlflow.set_tags({"training.stopped": result.stopped, "training.precision": model.config.precision})
        log_grid(generated[:GRID], prompts[:GRID], "samples.png")
    return {"row": row, "grid": generated[:GRID]}


CAPTION_INTERVALS = ("bleu4", "cider", "clipscore")
CAPTION_COLUMNS = [
    "captioner",
    "bleu1",
    "bleu4",
    "bleu4_low",
    "bleu4_high",
    "rouge_l",
    "cider",
    "cider_low",
    "cider_high",
    "clipscore",
    "clipscore_low",
    "clipscore_high",
    "seconds_per_image",
]


@task(name="caption-and-score", cache_policy=NO_CACHE)
def run_captioner(
    p: ComponentParams, params: GenerationBenchmarkParams, images: list[Any], references: list[list[str]]
) -> dict[str, Any]:
    """One captioner on the test images in a nested run: BLEU, ROUGE-L, CIDEr against the references,
    CLIPScore under the matcher."""
    generator = create("generator", p.name, **p.options)
    if getattr(generator, "task", None) != "image-to-text":
        raise ParamsError(
            f"generation-benchmark: captioners lists {p.name!r}, which is a {getattr(generator, 'task', '?')} "
            "generator, not image-to-text"
        )
    with tracked_run(params.experiment, p.name, {"captioner": p.name, **p.options}, nested=True):
        start = time.perf_counter()
        captions = [str(c) for c in generator.generate(images)]
        seconds = (time.perf_counter() - start) / max(1, len(images))
        row: dict[str, Any] = {"captioner": p.name}
        scores = create("metric", "clipscore", matcher=params.matcher).units(predictions=captions, images=images)
        for name in ("bleu", "rouge_l", "cider"):
            scores = scores.join(create("metric", name).units(predictions=captions, references=references))
        row.update(with_bounds(scores, CAPTION_INTERVALS))
        row["seconds_per_image"] = seconds
        mlflow.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, (int, float))})
        log_grid(images[:GRID], captions[:GRID], "captions.png")
    return row


def images_to_tensor_images(images: list[Any], resolution: int) -> list[Any]:
    """``images`` at ``resolution`` (as the models see them), back as PIL images."""
    from itm_core.models.text_to_image import images_to_tensor, tensor_to_images

    return tensor_to_images(images_to_tensor(images, resolution))


def grid_figure(grids: dict[str, list[Any]], prompts: list[str]) -> Any:
    """One row per model over the same prompts, the real test image first."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    columns = min(8, len(prompts))
    fig, axes = plt.subplots(len(grids), columns, figsize=(1.6 * columns, 1.75 * len(grids) + 0.6), squeeze=False)
    for r, (label, images) in enumerate(grids.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(images[c].convert("RGB").resize((96, 96), Image.Resampling.NEAREST))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(prompts[c], 22)), fontsize=6)
    fig.tight_layout()
    return fig


@tracked_flow("generation-benchmark")
def generation_benchmark(params: GenerationBenchmarkParams = GenerationBenchmarkParams()) -> list[dict[str, Any]]:
    """Every text-to-image model (or ``models``) trained on the same data, seed and time budget, each in a
    nested MLflow run; the leaderboard (r_precision against ``candidates`` prompts, alignment, fd, kid,
    the attribute accuracies, parameters, training and sampling time), one sample grid per model over
    the same prompts, and the real test images scored the same way as the reference row. ``captioners``
    (image-to-text generators) are compared on the same test images in ``caption_leaderboard.csv``."""
    import matplotlib.pyplot as plt

    require_matcher(params.matcher, "generation-benchmark", "matcher")
    data, _ = load_data(params.dataset, check=False)  # each image is checked as it is read, once
    splits = {s: data.split(s) for s in ("train", "val", "test")}
    images, skipped = {}, []
    for s in ("train", "val"):
        splits[s], images[s], bad = read_checked(splits[s], params.dataset.on_bad_image)
        skipped += bad
    test, reference, bad = read_checked(splits["test"], params.dataset.on_bad_image, limit=params.test_prompts)
    skipped += bad
    prompts = [refs[0] for refs in test.captions_by_image()]
    encoder = build_encoder(params.text_encoder, "text", splits["train"])
    shared = {"splits": {**splits, "test": test}, "prompts": prompts, "images": images, "reference": reference}
    cache = EmbeddingCache()
    with tracked_run(params.experiment, params.run_name or f"generation benchmark on {data.name}", params.model_dump()):
        log_dataset(without_skipped(data, skipped), skipped)
        rows, grids = [], {}
        real_resolution = params.real_resolution
        real = images_to_tensor_images(reference, real_resolution)
        rows.append(
            {
                "model": f"real test images ({real_resolution} px)",
                **score(real, prompts, test, None, params),
                "resolution": real_resolution,
            }
        )
        grids["real"] = real[:GRID]
        progress = Tracker("generation benchmark", len(params.models) + len(params.captioners), "model")
        for name in params.models:
            with scope(name):
                out = run_model(name, params, shared, encoder, cache)
            rows.append(out["row"])
            grids[name] = out["grid"]
            progress.advance(note=f"{name} done")
        if params.captioners:
            references = test.captions_by_image()
            scored = []
            for p in params.captioners:
                scored.append(run_captioner(p, params, reference, references))
                progress.advance(note=f"{p.name} done")
            captions = pd.DataFrame(scored).reindex(columns=CAPTION_COLUMNS)
            log_leaderboard(
                captions,
                "caption-leaderboard",
                f"Captioners on the same {len(references)} test images: n-gram scores against their captions, "
                "clipscore under the matcher. _low, _high: the 95% interval, bootstrap over the test images.",
            )
        board = pd.DataFrame(rows).reindex(columns=COLUMNS)
        log_leaderboard(
            board,
            "generation-leaderboard",
            f"{len(prompts)} test prompts (each image's first caption). r_precision: the prompt ranked first among "
            f"{params.candidates} candidates by the matcher (chance r_precision_chance). attr_*: read by the "
            "attribute reader; reader_all is the reader on real test images. The first row scores the real test "
            "images the same way. _low, _high: the 95% interval, bootstrap over the test prompts.",
        )
        fig = grid_figure(grids, prompts[:GRID])
        mlflow.log_figure(fig, "samples_by_model.png")
        plt.close(fig)
    return board.to_dict("records")
