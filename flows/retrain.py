"""The ``retrain`` flow: train a matcher, test it, register it, promote it when it beats the champion."""

from __future__ import annotations

from typing import Any

import mlflow
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.evaluate import log_retrieval_figures
from flows.retrain_generation import retrain_captioner, retrain_text_to_image
from flows.tasks import encode_features, load_data, log_dataset, warn_small_splits, without_skipped
from itm_core.config import RetrainParams
from itm_core.contract.evidence import UnitScores
from itm_core.data import ImageTextSet, SkippedImage
from itm_core.encode.embed import EmbeddingCache
from itm_core.encode.features import FeatureSplit
from itm_core.errors import ParamsError
from itm_core.judge.evaluation import RetrievalReport, build_encoders, report_from_embeddings, retrieval_report
from itm_core.judge.intervals import retrieval_scores
from itm_core.models.distributed import train_in_processes
from itm_core.models.loop import FitResult, settle_precision
from itm_core.models.matcher import Matcher
from itm_core.models.training import LiveTower, train_contrastive
from itm_core.ops.checkpoints import Checkpointer, find_resumable, resume_key
from itm_core.ops.promotion import register_and_promote_version
from itm_core.ops.tracking import load_matcher, log_matcher, tracked_flow, tracked_run


def check_unlockable(params: RetrainParams, encoders: dict[str, Any]) -> None:
    """Fail, before any run opens, when ``training.unlock`` names a tower that cannot be trained."""
    if params.training.unlock and params.training.heads == "none":
        raise ParamsError("training.unlock fine-tunes towers with the heads; with training.heads: none leave it empty")
    for modality in params.training.unlock:
        enc = encoders[modality]
        if not getattr(enc, "trainable", False) or not hasattr(enc, "train_module"):
            raise ParamsError(
                f"training.unlock: the {modality} encoder {enc.name!r} is not trainable; keep it locked or use a "
                "trainable encoder such as clip"
            )


def check_shared_space(image: Any, text: Any) -> None:
    """Fail, before any run opens, when ``training.heads: none`` is asked of towers that do not declare
    one joint space."""
    spaces = {m: getattr(e, "space", None) for m, e in (("image", image), ("text", text))}
    if spaces["image"] is None or spaces["image"] != spaces["text"]:
        raise ParamsError(
            f"training.heads: none registers the encoder pair as it is, which needs towers that share a joint space; "
            f"image encoder {image.name!r} has space {spaces['image']!r}, text encoder {text.name!r} has "
            f"{spaces['text']!r}. Use both towers of one checkpoint (clip with modality image and text and the same "
            "model), or train heads (heads: train)"
        )


def unlocked_towers(
    params: RetrainParams, encoders: dict[str, Any], splits: dict[str, ImageTextSet]
) -> dict[str, LiveTower]:
    """The towers ``training.unlock`` names, with their raw train and val items."""

    def items(data: ImageTextSet, m: str) -> list[str]:
        return [str(p) for p in data.image_paths()] if m == "image" else list(data.captions)

    return {
        m: LiveTower(encoders[m], items(splits["train"], m), items(splits["val"], m)) for m in params.training.unlock
    }


@task(name="train", cache_policy=NO_CACHE)
def train_matcher(
    params: RetrainParams,
    dims: tuple[int, int],
    train: FeatureSplit,
    val: FeatureSplit,
    unlocked: dict[str, LiveTower],
    checkpointer: Checkpointer | None = None,
    resume: dict[str, Any] | None = None,
) -> tuple[Matcher, FitResult]:
    """Fit projection heads on cached features (and fine-tune unlocked towers); per-epoch curves go to MLflow."""
    t = params.training
    torch.manual_seed(t.seed)
    encoders = params.image_encoder.model_dump(), params.text_encoder.model_dump()
    matcher = t.build_matcher(*encoders, *dims, images=len(train.image))
    mlflow.set_tag("training.input_rank", matcher.config["input_rank"])  # what `auto` settled on for this data

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:  # the progress line is the training loop's
        mlflow.log_metrics(metrics, step=epoch)

    if resume is not None:
        print(f"resuming from the checkpoint of epoch {resume['epoch']}")
    precision = settle_precision(t.precision, next(matcher.parameters()).device.type)
    mlflow.set_tag("training.precision", precision)  # what `auto` settled on for this machine
    if t.precision == "auto":
        print(f"training.precision auto: {precision}")
    if t.input_rank == "auto":
        print(f"training.input_rank auto: {matcher.config['input_rank']} ({len(train.image):,} training images)")
    if t.processes > 1:
        print(f"training data-parallel in {t.processes} processes (torch.distributed, gloo)")
        result = train_in_processes(
            t.processes,
            matcher,
            train,
            val,
            t,
            unlocked,
            resume,
            checkpointer.path if checkpointer else None,
            on_epoch,
            checkpointer.publish if checkpointer else None,
        )
    else:
        result = train_contrastive(matcher, train, val, t, on_epoch, unlocked, checkpoint=checkpointer, resume=resume)
    mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": result.seconds})
    return matcher, result


@torch.no_grad()
def test_report(matcher: Matcher, features: FeatureSplit, test: ImageTextSet) -> RetrievalReport:
    """Test metrics, ranks and retrieval examples from the test split's tower features."""
    matcher.eval()
    return report_from_embeddings(
        matcher.embed_image_features(features.image),
        matcher.embed_text_features(features.text),
        test,
        matcher.similarity,
    )


@task(name="register-and-promote", cache_policy=NO_CACHE)
def register_and_promote(
    matcher: Matcher, params: RetrainParams, report: RetrievalReport, test: ImageTextSet, cache: EmbeddingCache
) -> dict[str, Any]:
    """Log and register the matcher; move ``champion`` as ``params.promotion`` says, the champion scored
    on the same test images (decided under the promotion lock, so concurrent retrains decide in turn)."""

    def score(version: str) -> UnitScores:
        champion = load_matcher(f"models:/{params.model_name}/{version}")
        return retrieval_scores(retrieval_report(champion, test, cache).ranks, test.caption_image)

    info, decision = register_and_promote_version(
        params.model_name,
        lambda: log_matcher(matcher, params.model_name),
        params.promote_metric,
        retrieval_scores(report.ranks, test.caption_image),
        score,
        params.promotion,
    )
    return decision.outcome(info)


@tracked_flow("retrain")
def retrain(params: RetrainParams = RetrainParams()) -> dict[str, Any]:
    """Train projection heads over two locked encoder towers with a contrastive loss (or, with
    ``training.heads: none``, take a pretrained pair as it is), test on the test split, register the
    model as ``itm-matcher`` and promote it to ``champion`` as ``promotion`` says.
    With ``task`` ``captioning`` or ``text-to-image`` it trains, registers and promotes a generator instead."""
    if params.task == "captioning":
        return retrain_captioner(params)
    if params.task == "text-to-image":
        return retrain_text_to_image(params)
    data, _ = load_data(params.dataset, check=False)  # each image is checked in the encoding pass that reads it
    pretrained = params.training.heads == "none"  # nothing to train: only the test split is read
    splits = {s: data.split(s) for s in (("test",) if pretrained else ("train", "val", "test"))}
    image_encoder, text_encoder = build_encoders(
        params.image_encoder, params.text_encoder, splits.get("train"), fit=not pretrained
    )
    encoders = {"image": image_encoder, "text": text_encoder}
    check_unlockable(params, encoders)
    if pretrained:  # an encoder that needs fitting has no pretrained joint space: refused here
        check_shared_space(image_encoder, text_encoder)
    cache = EmbeddingCache(float16=params.encoding.float16)
    run_name = params.run_name or f"{params.image_encoder.name} + {params.text_encoder.name}"
    key = resume_key(params.model_dump(), data.fingerprint())
    resumable = find_resumable(params.experiment, key) if params.training.resume else None
    if params.training.resume and resumable is None:
        print("training.resume: no unfinished run of these parameters with a checkpoint; starting afresh")
    checkpointer = Checkpointer(key, params.training.checkpoint_every)
    with tracked_run(
        params.experiment, run_name, params.model_dump(), run_id=resumable[0].info.run_id if resumable else None
    ) as run:
        mlflow.set_tag("itm.resume_key", key)
        if resumable:
            mlflow.set_tag("itm.resumed_from_epoch", str(resumable[1]["epoch"]))
        features: dict[str, FeatureSplit] = {}
        skipped: list[SkippedImage] = []
        for s, d in list(splits.items()):
            splits[s], features[s], bad = encode_features(
                image_encoder, text_encoder, d, cache, params.encoding, params.dataset.on_bad_image
            )
            skipped += bad
        log_dataset(without_skipped(data, skipped), skipped)
        warnings = warn_small_splits(splits, params.promotion.min_test_images)
        dims = (int(image_encoder.dim), int(text_encoder.dim))
        unlocked = {} if pretrained else unlocked_towers(params, encoders, splits)
        if pretrained:
            matcher = Matcher(params.image_encoder.model_dump(), params.text_encoder.model_dump(), *dims, heads=False)
            result = FitResult(stopped="no heads to train")
        else:
            matcher, result = train_matcher(
                params,
                dims,
                features["train"],
                features["val"],
                unlocked,
                checkpointer,
                resumable[1] if resumable else None,
            )
        if unlocked:  # fine-tuned towers have a new identity: their test features are encoded afresh
            _, features["test"], _ = encode_features(
                image_encoder, text_encoder, splits["test"], cache, params.encoding
            )
        report = test_report(matcher, features["test"], splits["test"])
        test_metrics = report.metrics
        mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items()})
        matcher.attach_encoders(image_encoder, text_encoder)
        log_retrieval_figures(report, splits["test"], run_name)
        outcome = register_and_promote(matcher, params, report, splits["test"], cache)
        create_markdown_artifact(
            key="retrain-summary",
            markdown=(
                f"# retrain: {run_name}\n\n| metric | test |\n|---|---|\n"
                + "".join(f"| {k} | {v:.4f} |\n" for k, v in test_metrics.items())
                + f"\nbest epoch {result.best_epoch} of {len(result.history)}; {outcome['decision']}\n"
            ),
        )
    checkpointer.clear()
    return {
        "run_id": run.info.run_id,
        "test": test_metrics,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "warnings": warnings,
        **outcome,
    }
