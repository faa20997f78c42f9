"""The generation tasks of the ``retrain`` flow: a captioner (task ``captioning``) or a text-to-image
model (task ``text-to-image``), trained, tested, registered and promoted when better."""

from __future__ import annotations

from typing import Any

import mlflow
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.tasks import (
    checked_by_encoding,
    load_data,
    log_dataset,
    read_checked,
    warn_small_splits,
    without_skipped,
)
from itm_core.config import RetrainParams
from itm_core.contract.components import Encoder
from itm_core.contract.evidence import UnitScores
from itm_core.contract.registry import create
from itm_core.data import ImageTextSet, load_images
from itm_core.encode.embed import EmbeddingCache, encode, encode_tokens
from itm_core.errors import ModelError, PluginError
from itm_core.judge.evaluation import build_encoder
from itm_core.ops.plots import log_grid
from itm_core.ops.promotion import register_and_promote_version
from itm_core.ops.tracking import load_generator_model, load_matcher, log_generator, tracked_run

SAMPLES = 8


def _register(
    generator: Any, params: RetrainParams, metric: str, scores: UnitScores, champion_scores: Any
) -> dict[str, Any]:
    """Log and register ``generator``; ``champion_scores(model)`` scores the current champion on the
    same test data, under the promotion lock, for the decision ``params.promotion`` asks for."""
    name = params.model_name
    info, decision = register_and_promote_version(
        name,
        lambda: log_generator(generator, name),
        metric,
        scores,
        lambda version: champion_scores(load_generator_model(f"models:/{name}/{version}")),
        params.promotion,
    )
    return decision.outcome(info)


def _summary(key: str, title: str, metrics: dict[str, float], footer: str) -> None:
    create_markdown_artifact(
        key=key,
        markdown=f"# {title}\n\n| metric | test |\n|---|---|\n"
        + "".join(f"| {k} | {v:.4f} |\n" for k, v in metrics.items())
        + f"\n{footer}\n",
    )


def epoch_callback(sample_every: int, samples: Any) -> Any:
    """Per epoch: the losses to MLflow and every ``sample_every`` epochs (and
    the first) a grid of ``samples(model) -> (images, texts)`` as ``samples/epoch_NNN.png``."""

    def on_epoch(epoch: int, metrics: dict[str, float], model: Any) -> None:  # the training loop prints progress
        mlflow.log_metrics(metrics, step=epoch)
        if epoch % sample_every == 0 or epoch == 1:
            images, texts = samples(model)
            log_grid(images, texts, f"samples/epoch_{epoch:03d}.png")

    return on_epoch


# --- captioning -------------------------------------------------------------------------------------


@task(name="train-captioner", cache_policy=NO_CACHE)
def train_captioner_task(
    params: RetrainParams, features: dict[str, torch.Tensor], splits: dict[str, ImageTextSet]
) -> tuple[Any, Any]:
    """Train the GPT-2 captioner on cached image features; log losses every epoch and sample captions
    of fixed validation images every ``sample_every`` epochs."""
    from itm_core.models.captioning import train_captioner

    c = params.captioning
    val = splits["val"]
    shown = list(range(min(SAMPLES, len(val))))
    shown_images = load_images([val.image_path(i) for i in shown])

    on_epoch = epoch_callback(
        c.sample_every, lambda captioner: (shown_images, captioner.caption_features(features["val"][shown]))
    )

    tr = splits["train"]
    captioner, result = train_captioner(
        params.image_encoder.model_dump(),
        features["train"],
        tr.captions,
        tr.caption_image,
        features["val"],
        val.captions,
        val.caption_image,
        c,
        on_epoch,
    )
    mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": result.seconds})
    mlflow.set_tag("training.stopped", result.stopped)
    return captioner, result


def retrain_captioner(params: RetrainParams) -> dict[str, Any]:
    data, _ = load_data(params.dataset, check=False)  # each image is checked in the encoding pass that reads it
    splits = {s: data.split(s) for s in ("train", "val", "test")}
    encoder = build_encoder(params.image_encoder, "image", splits["train"])
    bleu = create("metric", "bleu")
    cache = EmbeddingCache()
    run_name = params.run_name or f"captioner on {params.image_encoder.name}"
    with tracked_run(params.experiment, run_name, params.model_dump()) as run:
        features, skipped = {}, []
        for s, d in list(splits.items()):
            splits[s], features[s], bad = checked_by_encoding(encoder, d, cache, params.dataset.on_bad_image)
            skipped += bad
        log_dataset(without_skipped(data, skipped), skipped)
        warnings = warn_small_splits(splits, params.promotion.min_test_images)
        captioner, result = train_captioner_task(params, features, splits)
        captioner.encoder = encoder
        test = splits["test"]
        refs = test.captions_by_image()
        beams = params.captioning.num_beams
        predictions = captioner.caption_features(features["test"], num_beams=beams)
        scores = bleu.units(predictions=predictions, references=refs)
        test_metrics = {k: scores.value(k) for k in scores.names()}
        mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
        print(f"test: {test_metrics}")

        def champion_bleu(champion: Any) -> UnitScores:
            images = load_images(test.image_paths())
            return bleu.units(predictions=champion.caption_images(images, num_beams=beams), references=refs)

        outcome = _register(captioner, params, "bleu4", scores, champion_bleu)
        _summary(
            "retrain-summary",
            f"retrain (captioning): {run_name}",
            test_metrics,
            f"best epoch {result.best_epoch} of {len(result.history)} ({result.seconds:.0f} s); {outcome['decision']}",
        )
    return {
        "run_id": run.info.run_id,
        "test": test_metrics,
        "best_epoch": result.best_epoch,
        "train_seconds": result.seconds,
        "warnings": warnings,
        **outcome,
    }


# --- text to image ----------------------------------------------------------------------------------


def text_features(encoder: Encoder, data: ImageTextSet, cache: EmbeddingCache, tokens: bool) -> Any:
    from itm_core.models.text_to_image import TextFeatures

    owners = torch.tensor(data.caption_image, dtype=torch.long)
    if tokens:
        tok, mask = encode_tokens(encoder, data.captions, cache, desc=f"{data.name}: {encoder.name} tokens")
        return TextFeatures(tok, mask, owners)
    return TextFeatures(encode(encoder, data.captions, cache, desc=f"{data.name}: {encoder.name}"), None, owners)


def score_images(
    images: list[Any],
    prompts: list[str],
    matcher: str,
    candidates: int,
    distractors: list[str],
    equivalents: list[list[str]],
    seed: int,
) -> UnitScores:
    """Per test prompt: whether the matcher ranks it first among ``candidates`` (``r_precision``), its
    chance, and the ``alignment`` of the image drawn for it."""
    ranked = create("metric", "r_precision", matcher=matcher, candidates=candidates, seed=seed).units(
        images=images, prompts=prompts, distractors=distractors, equivalents=equivalents
    )
    return ranked.join(create("metric", "alignment", matcher=matcher).units(images=images, prompts=prompts))


@task(name="train-text-to-image", cache_policy=NO_CACHE)
def train_t2i_task(
    params: RetrainParams, images: dict[str, torch.Tensor], features: dict[str, Any], prompts: list[str]
) -> tuple[Any, Any]:
    """Train the text-to-image model; log losses every epoch and a grid for fixed validation prompts
    every ``sample_every`` epochs."""
    from itm_core.models.text_to_image import tensor_to_images, train_text_to_image

    t = params.text_to_image
    shown = min(SAMPLES, len(prompts))
    rows = features["val"].first_captions(len(images["val"]))[:shown]
    shown_text = features["val"].text[rows].float()
    shown_mask = None if features["val"].mask is None else features["val"].mask[rows]

    on_epoch = epoch_callback(
        t.sample_every,
        lambda model: (
            tensor_to_images(model.generate_from_features(shown_text, shown_mask, seed=t.seed)),
            prompts[:shown],
        ),
    )

    model, result = train_text_to_image(
        params.text_encoder.model_dump(),
        images["train"],
        features["train"],
        images["val"],
        features["val"],
        t,
        on_epoch,
    )
    mlflow.log_metrics({"train_seconds": result.seconds, "train_steps": result.steps})
    mlflow.set_tags({"training.stopped": result.stopped, "training.precision": model.config.precision})
    return model, result


def require_diffusers(model: str, option: str) -> None:
    """The diffusion model needs diffusers: fail with the install command before any work."""
    if model == "diffusion":
        try:
            import diffusers  # noqa: F401
        except ImportError:
            raise PluginError(f"{option} 'diffusion' needs diffusers: pip install 'itm-workbench[diffusion]'") from None


def require_matcher(uri: str, who: str, option: str) -> None:
    """Fail before training when the matcher that scores the test images cannot be loaded."""
    try:
        load_matcher(uri)
    except ModelError as exc:
        raise ModelError(
            f"{who}: the test images are scored by {option} {uri!r}, which cannot be loaded "
            f"({exc}). Train a matcher first (`itm run retrain`), or set {option} to another model URI "
            "or a saved matcher folder."
        ) from None


def retrain_text_to_image(params: RetrainParams) -> dict[str, Any]:
    from itm_core.models.text_to_image import images_to_tensor, uses_tokens

    t = params.text_to_image
    require_diffusers(t.model, "text_to_image.model")
    require_matcher(t.matcher, "text-to-image", "text_to_image.matcher")
    data, _ = load_data(params.dataset, check=False)  # the images are checked as they are read for training
    splits = {s: data.split(s) for s in ("train", "val", "test")}
    encoder = build_encoder(params.text_encoder, "text", splits["train"])
    cache = EmbeddingCache()
    tokens = uses_tokens(t, encoder)
    run_name = params.run_name or f"{t.model} on {params.text_encoder.name}"
    with tracked_run(params.experiment, run_name, params.model_dump()) as run:
        images, skipped = {}, []
        for s in ("train", "val"):  # the test split gives prompts only: its images are not read
            splits[s], decoded, bad = read_checked(splits[s], params.dataset.on_bad_image)
            images[s] = images_to_tensor(decoded, t.resolution)
            skipped += bad
        log_dataset(without_skipped(data, skipped), skipped)
        test = splits["test"].head(t.test_prompts)  # the prompts drawn and scored
        warnings = warn_small_splits({**splits, "test": test}, params.promotion.min_test_images)
        features = {s: text_features(encoder, d, cache, tokens) for s, d in splits.items()}
        val = splits["val"]
        model, result = train_t2i_task(params, images, features, [refs[0] for refs in val.captions_by_image()])
        model.encoder = encoder
        equivalents = test.captions_by_image()
        prompts = [refs[0] for refs in equivalents]
        distractors = splits["test"].captions

        def score(generator: Any) -> UnitScores:
            return score_images(
                generator.generate(prompts, seed=t.seed),
                prompts,
                t.matcher,
                t.candidates,
                distractors,
                equivalents,
                t.seed,
            )

        scores = score(model)
        test_metrics = {k: scores.value(k) for k in scores.names()}
        mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
        generated = model.generate(prompts[:16], seed=t.seed)
        log_grid(generated, prompts[:16], "test_samples.png")
        print(f"test: {test_metrics}")
        outcome = _register(model, params, "r_precision", scores, score)
        _summary(
            "retrain-summary",
            f"retrain (text-to-image): {run_name}",
            test_metrics,
            f"{result.steps} steps in {result.seconds:.0f} s ({result.stopped}); {outcome['decision']}",
        )
    return {
        "run_id": run.info.run_id,
        "test": test_metrics,
        "train_seconds": result.seconds,
        "warnings": warnings,
        **outcome,
    }
