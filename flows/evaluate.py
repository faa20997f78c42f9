"""The ``evaluate`` flow: one or several matchers on a dataset split; several make a leaderboard."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.tasks import load_data, log_dataset
from itm_core.config import EvaluateParams, MatcherRef
from itm_core.data import ImageTextSet
from itm_core.embed import EmbeddingCache
from itm_core.evaluation import build_scorer, evaluate_retrieval
from itm_core.tracking import log_table, tracked_run

LEADERBOARD_COLUMNS = ["matcher", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_medr", "t2i_medr", "rsum"]


@task(name="evaluate-matcher", cache_policy=NO_CACHE)
def evaluate_matcher(ref: MatcherRef, data: ImageTextSet, train: ImageTextSet | None, experiment: str, cache: EmbeddingCache) -> dict[str, Any]:
    """Score one matcher in a nested MLflow run."""
    name = ref.display_name()
    with tracked_run(experiment, name, ref.model_dump(exclude_none=True), nested=True):
        metrics = evaluate_retrieval(build_scorer(ref, train), data, cache)
        mlflow.log_metrics(metrics)
    print(f"{name}: i2t R@1 {metrics['i2t_r1']:.3f}, t2i R@1 {metrics['t2i_r1']:.3f}, rsum {metrics['rsum']:.1f}")
    return {"matcher": name, **metrics}


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvaluateParams = EvaluateParams()) -> list[dict[str, Any]]:
    """Retrieval metrics for each matcher on ``split``, logged as nested runs and a leaderboard table."""
    data, skipped = load_data(params.dataset)
    split = data.split(params.split)
    train = data.split("train") if "train" in data.splits else None
    cache = EmbeddingCache()
    with tracked_run(params.experiment, params.run_name or f"leaderboard on {split.name}", params.model_dump(exclude={"matchers"})):
        log_dataset(split, skipped)
        mlflow.log_param("matchers", ", ".join(m.display_name() for m in params.matchers))
        rows = [evaluate_matcher(ref, split, train, params.experiment, cache) for ref in params.matchers]
        board = pd.DataFrame(rows)[LEADERBOARD_COLUMNS].sort_values("rsum", ascending=False).reset_index(drop=True)
        log_table(board, "leaderboard.csv")
        best = board.iloc[0]
        mlflow.set_tag("leader", best["matcher"])
        mlflow.log_metrics({k: float(best[k]) for k in LEADERBOARD_COLUMNS[1:]})
        create_table_artifact(
            key="leaderboard",
            table=board.round(4).to_dict("records"),
            description=f"Retrieval on {split.name} ({len(split)} images, {len(split.captions)} captions)",
        )
    return board.to_dict("records")
