"""The ``index`` flow: a FAISS index over a dataset's images (and captions) in a matcher's joint space."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.retry import transient_only
from flows.tasks import checked_by_encoding, load_data, log_dataset
from itm_core.config import IndexParams
from itm_core.data import ImageTextSet
from itm_core.data.images import OnError, SkippedImage
from itm_core.encode.embed import EmbeddingCache
from itm_core.errors import ModelError, ParamsError
from itm_core.models.matcher import Matcher
from itm_core.models.search_index import SearchIndex
from itm_core.ops import events
from itm_core.ops.promotion import champion_version
from itm_core.ops.search import SearchBundle, log_search_model, matcher_identity
from itm_core.ops.tracking import CHAMPION, load_matcher, prefect_context, tracked_flow, tracked_run


@task(name="load-matcher", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def load_matcher_task(uri: str) -> Matcher:
    try:
        return load_matcher(uri)
    except ModelError as exc:
        raise ModelError(
            f"index: {exc}. Train a matcher first (`itm run retrain`), or set matcher to a model URI or a saved "
            "matcher folder"
        ) from None


@task(name="embed", cache_policy=NO_CACHE)
def embed(
    matcher: Matcher, data: ImageTextSet, captions: bool, on_bad_image: OnError
) -> tuple[ImageTextSet, np.ndarray, np.ndarray | None, list[SkippedImage]]:
    """Joint-space embeddings through the cached, resumable encoding path (tower features come from
    the embedding cache when present, and are written there in shards as they are computed). Each
    image file is read, checked and decoded once, in that pass: bad ones are skipped (and returned)
    or fail the flow, by ``on_bad_image``."""
    cache = EmbeddingCache()
    matcher.eval()
    kept, features, skipped = checked_by_encoding(matcher._encoder("image"), data, cache, on_bad_image)
    with torch.no_grad():
        images = matcher.embed_image_features(features).numpy()
    texts = matcher.embed_texts(kept.captions, cache).numpy() if captions else None
    return kept, images, texts, skipped


@task(name="build-index", cache_policy=NO_CACHE)
def build_index(vectors: np.ndarray, items: pd.DataFrame, params: IndexParams, meta: dict[str, Any]) -> SearchIndex:
    start = time.perf_counter()
    index = SearchIndex.build(vectors, items, params.index, meta)
    print(f"{index.kind} index of {len(index)} items ({index.dim} dims) built in {time.perf_counter() - start:.1f} s")
    return index


def select_splits(data: ImageTextSet, splits: list[str]) -> ImageTextSet:
    if not splits:
        return data
    unknown = sorted(set(splits) - set(data.splits))
    if unknown:
        raise ParamsError(f"index: splits {unknown} are not in {data.name} (its splits: {', '.join(data.splits)})")
    return data.subset([i for i, s in enumerate(data.image_split) if s in splits])


@tracked_flow("index")
def index(params: IndexParams = IndexParams()) -> dict[str, Any]:
    """Embed the collection with the matcher, build the index, log it (with the item table and the
    matcher it needs) to MLflow, and register matcher and index as the search model."""
    identity = matcher_identity(params.matcher)
    matcher = load_matcher_task(identity.version_uri or params.matcher)
    data, _ = load_data(params.dataset, check=False)  # each image is checked in the encoding pass that reads it
    data = select_splits(data, params.splits)
    meta = {
        "matcher_id": identity.id,
        "matcher_uri": params.matcher,
        "matcher_version_uri": identity.version_uri,
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint(),
    }
    with tracked_run(
        params.experiment, params.run_name or f"index {data.name} with {identity.id}", params.model_dump()
    ) as run:
        mlflow.set_tags({"dataset.fingerprint": meta["dataset_fingerprint"], "matcher.id": identity.id})
        data, image_vectors, caption_vectors, skipped = embed(
            matcher, data, params.captions, params.dataset.on_bad_image
        )
        log_dataset(data, skipped)
        firsts = [caps[0] if caps else "" for caps in data.captions_by_image()]
        items = pd.DataFrame(
            {"image": [str(p.resolve()) for p in data.image_paths()], "split": data.image_split, "caption": firsts}
        )
        images = build_index(image_vectors, items, params, meta)
        captions = None
        if caption_vectors is not None:
            owners = data.caption_image
            caption_items = pd.DataFrame(
                {"caption": data.captions, "image": [str(data.image_path(i).resolve()) for i in owners]}
            )
            captions = build_index(caption_vectors, caption_items, params, meta)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifacts(str(images.save(Path(tmp) / "index")), "index")
            if captions is not None:
                mlflow.log_artifacts(str(captions.save(Path(tmp) / "captions")), "captions")
        mlflow.log_metrics({"index_size": len(images), "caption_index_size": len(captions) if captions else 0})
        mlflow.set_tag("index.kind", images.kind)
        outcome: dict[str, Any] = {"model_version": None, "promoted": False}
        if params.registered_model:
            info = log_search_model(SearchBundle(matcher, images, captions), params.registered_model)
            version = str(info.registered_model_version)
            champion = champion_version("itm-matcher")
            current = champion is not None and identity.id == f"{champion.name} v{champion.version}"
            if params.promote and current:
                mlflow.MlflowClient().set_registered_model_alias(params.registered_model, CHAMPION, version)
            outcome = {"model_version": version, "promoted": bool(params.promote and current)}
            decision = (
                "promoted to champion"
                if outcome["promoted"]
                else "not promoted (built with a matcher that is not the current champion)"
            )
            for key, value in {"matcher": identity.id, **prefect_context()}.items():
                mlflow.MlflowClient().set_model_version_tag(params.registered_model, version, key, value)
            print(f"registered {params.registered_model} v{version}: {decision}")
        summary = (
            f"# Index of {data.name}\n\n{len(images)} images ({images.kind})"
            + (f", {len(captions)} captions" if captions else "")
            + f', built with **{identity.id}**; search it with `itm search "..." --index {run.info.run_id}`'
        )
        create_markdown_artifact(key="index", markdown=summary, description="the search index")
        events.index_built(
            run.info.run_id, identity.id, data.name, len(images), outcome["model_version"], outcome["promoted"]
        )
    return {
        "run_id": run.info.run_id,
        "kind": images.kind,
        "images": len(images),
        "captions": len(captions) if captions else 0,
        "matcher": identity.id,
        **outcome,
    }
