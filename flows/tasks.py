"""Prefect tasks shared by the flows: coarse steps over the core, no model math."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.retry import transient_only
from itm_core.config import DatasetParams, EncodingParams
from itm_core.contract.components import Encoder
from itm_core.contract.datasets import load_dataset
from itm_core.data import ImageTextSet, SkippedImage, read_images
from itm_core.data.images import OnError
from itm_core.encode.embed import EmbeddingCache, encode_images, encode_split, encoder_key
from itm_core.encode.features import FeatureSplit
from itm_core.ops.lineage import log_inputs, note_dataset
from itm_core.ops.tracking import log_table


@task(name="load-data", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def load_data(params: DatasetParams, check: bool = True) -> tuple[ImageTextSet, list[SkippedImage]]:
    """Build or read the dataset; with ``check``, decode every image once to leave out bad ones
    (without it, the encoding pass checks each image as it reads it)."""
    data, skipped = load_dataset(params, check)
    report_skipped(skipped)
    return data, skipped


MIN_VAL_IMAGES = 50  # fewer validation images make early stopping and the best epoch noise


def warn_small_splits(splits: dict[str, ImageTextSet], min_test_images: int) -> list[str]:
    """Say what a small validation or test split costs (printed, and tagged ``data.warnings`` on the
    active MLflow run); the warnings, for the flow's result."""
    warnings = []
    val, test = len(splits["val"]) if "val" in splits else None, len(splits["test"])
    if val is not None and val < MIN_VAL_IMAGES:
        warnings.append(
            f"split 'val' has {val} images (under {MIN_VAL_IMAGES}): early stopping and the best epoch rest on them, "
            "so expect them to be noise"
        )
    if test < min_test_images:
        warnings.append(
            f"split 'test' has {test} images (under promotion.min_test_images, {min_test_images}): the test figures "
            "have wide intervals, and this version cannot replace a champion by evidence"
        )
    for w in warnings:
        print(f"warning: {w}")
    if warnings and mlflow.active_run() is not None:
        mlflow.set_tag("data.warnings", " | ".join(warnings))
    return warnings


def report_skipped(skipped: list[SkippedImage]) -> None:
    for s in skipped:
        print(f"skipped image {s.path}: {s.reason}")


def without_skipped(data: ImageTextSet, skipped: list[SkippedImage]) -> ImageTextSet:
    """``data`` less the images of ``skipped`` (with their captions)."""
    bad = {s.path for s in skipped}
    return data.subset([i for i, rel in enumerate(data.images) if rel not in bad]) if bad else data


def checked_by_encoding(
    image_encoder: Encoder, data: ImageTextSet, cache: EmbeddingCache, on_bad_image: OnError, options: Any = None
) -> tuple[ImageTextSet, Any, list[SkippedImage]]:
    """Encode every image of ``data`` with ``image_encoder`` into ``cache``, each file read, checked and
    decoded once: the usable subset, its feature rows and the skipped images (reported). The bad-image
    check of a flow whose dataset was loaded with ``check=False``; later passes of the same encoder
    read the cache."""
    kept, features, skipped = encode_images(image_encoder, data, cache, options, on_bad_image)
    report_skipped(skipped)
    return kept, features, skipped


def read_checked(
    data: ImageTextSet, on_bad_image: OnError, limit: int | None = None
) -> tuple[ImageTextSet, list[Any], list[SkippedImage]]:
    """Decode the images of ``data`` once, keeping them in memory (see :func:`itm_core.data.read_images`),
    with the skipped ones reported: the bad-image check of a flow that needs the images themselves."""
    kept, images, skipped = read_images(data, on_bad_image, limit=limit)
    report_skipped(skipped)
    return kept, images, skipped


def log_dataset(data: ImageTextSet, skipped: list[SkippedImage], prefix: str = "data") -> tuple[str, str | None]:
    """Dataset identity and size as params, each split as an input in MLflow's Datasets panel
    (``itm.dataset.changed`` when the data differs from the previous run's); the skipped-image
    report as an artifact. Returns the data's fingerprint and the one the previous run recorded
    (``None``: no earlier run)."""
    sizes = {f"{prefix}.{s}.images": sum(1 for x in data.image_split if x == s) for s in data.splits}
    fingerprint = data.fingerprint()
    previous = note_dataset(data, fingerprint)
    log_inputs(data)
    mlflow.log_params(
        {
            f"{prefix}.fingerprint": fingerprint,
            f"{prefix}.splits_fingerprint": data.splits_fingerprint(),
            f"{prefix}.skipped_images": len(skipped),
            **sizes,
        }
    )
    if skipped:
        log_table(pd.DataFrame([vars(s) for s in skipped]), "skipped_images.csv")
    return fingerprint, previous


def encode_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect's cache key for the encoding step: the data (its pairs, and each image file's size and
    modification time), both encoders' identities (name, options, fitted state) and the bad-image policy."""
    data: ImageTextSet = parameters["data"]
    files = hashlib.sha256()
    for path in data.image_paths():
        try:
            stat = path.stat()
            files.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        except OSError:
            files.update(f"{path}:missing;".encode())
    parts = [
        data.fingerprint(),
        files.hexdigest()[:16],
        encoder_key(parameters["image_encoder"]),
        encoder_key(parameters["text_encoder"]),
    ]
    return "encode-" + "-".join([*parts, parameters.get("on_bad_image", "fail")])


@task(name="encode", cache_key_fn=encode_cache_key, cache_expiration=timedelta(days=7), persist_result=True)
def encode_features(
    image_encoder: Encoder,
    text_encoder: Encoder,
    data: ImageTextSet,
    cache: EmbeddingCache,
    encoding: EncodingParams | None = None,
    on_bad_image: OnError = "fail",
) -> tuple[ImageTextSet, FeatureSplit, list[SkippedImage]]:
    """Tower features of one split's usable images and their captions, each image read and checked
    once. Prefect caches the result by data and encoders, so a rerun of a flow skips the step (shown
    as ``Cached`` in the UI); below it, the embedding cache serves each item once. With a Dask
    executor the images are first encoded into the cache as Prefect tasks on the cluster."""
    encoding = encoding or EncodingParams()
    if encoding.executor.kind == "dask":
        from flows.dask_encoding import encode_on_dask

        encode_on_dask(image_encoder, text_encoder, data, cache, encoding)
    kept, features, skipped = encode_split(image_encoder, text_encoder, data, cache, encoding, on_bad_image)
    for s in skipped:
        print(f"skipped image {s.path}: {s.reason}")
    return kept, features, skipped


def records(board: pd.DataFrame, digits: int | None = None) -> list[dict[str, Any]]:
    """The rows of ``board`` (rounded to ``digits``) with missing values as ``None``, as JSON wants them."""
    shown = board.round(digits) if digits is not None else board
    return shown.astype(object).where(board.notna(), None).to_dict("records")


def log_leaderboard(board: pd.DataFrame, name: str, description: str) -> None:
    """``board`` as ``<name>.csv`` in the MLflow run and as the Prefect table artifact ``name``."""
    from prefect.artifacts import create_table_artifact

    log_table(board, f"{name.replace('-', '_')}.csv")
    create_table_artifact(key=name, table=records(board, 4), description=description)
