"""Prefect tasks shared by the flows: coarse steps over the core, no model math."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from itm_core.config import DatasetParams
from itm_core.data import ImageTextSet, SkippedImage
from itm_core.data.source import load_dataset
from itm_core.embed import EmbeddingCache, FeatureSplit, encode_split
from itm_core.tracking import log_table


@task(name="load-data", cache_policy=NO_CACHE)
def load_data(params: DatasetParams) -> tuple[ImageTextSet, list[SkippedImage]]:
    """Build or read the dataset and decode every image once."""
    data, skipped = load_dataset(params)
    for s in skipped:
        print(f"skipped image {s.path}: {s.reason}")
    return data, skipped


def log_dataset(data: ImageTextSet, skipped: list[SkippedImage], prefix: str = "data") -> None:
    """Dataset identity and size as params; the skipped-image report as an artifact."""
    sizes = {f"{prefix}.{s}.images": sum(1 for x in data.image_split if x == s) for s in data.splits}
    mlflow.log_params({f"{prefix}.fingerprint": data.fingerprint(), f"{prefix}.skipped_images": len(skipped), **sizes})
    if skipped:
        log_table(pd.DataFrame([vars(s) for s in skipped]), "skipped_images.csv")


@task(name="encode", cache_policy=NO_CACHE)
def encode_features(image_encoder: Any, text_encoder: Any, data: ImageTextSet, cache: EmbeddingCache) -> FeatureSplit:
    """Tower features of one split (from the embedding cache where present)."""
    return encode_split(image_encoder, text_encoder, data, cache)
