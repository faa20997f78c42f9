"""The ``evaluate`` flow: one or several matchers on a dataset split; several make a leaderboard."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.retry import transient_only
from flows.tasks import checked_by_encoding, load_data, log_dataset
from itm_core.config import EvaluateParams, MatcherRef
from itm_core.data import ImageTextSet, SkippedImage, load_images
from itm_core.data.images import OnError
from itm_core.encode.embed import EmbeddingCache
from itm_core.judge.evaluation import RetrievalReport, image_tower, retrieval_report
from itm_core.judge.intervals import SHOWN, bounds, recall_intervals, shown
from itm_core.ops.plots import recall_at_k_figure, retrieval_examples_figure
from itm_core.ops.scorers import build_scorer
from itm_core.ops.tracking import log_table, tracked_flow, tracked_run
from itm_core.progress import Tracker

LEADERBOARD_COLUMNS = [
    "matcher",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "i2t_medr",
    "t2i_medr",
    "rsum",
    *(f"{m}_{side}" for m in SHOWN for side in ("low", "high")),
]


def log_retrieval_figures(report: RetrievalReport, data: ImageTextSet, label: str) -> None:
    """The recall@K curve and the retrieval example grid of one matcher, in the active MLflow run."""
    import matplotlib.pyplot as plt

    fig = recall_at_k_figure({label: report.ranks})
    mlflow.log_figure(fig, "recall_at_k.png")
    plt.close(fig)
    owners = data.caption_image
    results = [load_images([data.image_path(i) for i in row]) for row in report.top_images]
    hits = [[i == owners[q] for i in row] for q, row in zip(report.queries, report.top_images)]
    fig = retrieval_examples_figure([data.captions[q] for q in report.queries], results, hits)
    mlflow.log_figure(fig, "retrieval_examples.png")
    plt.close(fig)


@task(
    name="evaluate-matcher", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only
)
def evaluate_matcher(
    ref: MatcherRef,
    data: ImageTextSet,
    train: ImageTextSet | None,
    experiment: str,
    cache: EmbeddingCache,
    on_bad_image: OnError | None = None,
) -> dict[str, Any]:
    """Score one matcher in a nested MLflow run, with its recall@K curve and retrieval examples.
    With ``on_bad_image``, the images are checked in this matcher's encoding pass (each read once) and
    the row carries the usable subset (``_data``) and the skipped images (``_skipped``).
    Retried once: loading a registered model from a tracking server can fail transiently."""
    name = ref.display_name()
    skipped: list[SkippedImage] = []
    with tracked_run(experiment, name, ref.model_dump(exclude_none=True), nested=True):
        scorer = build_scorer(ref, train)
        if on_bad_image is not None:
            data, _, skipped = checked_by_encoding(image_tower(scorer), data, cache, on_bad_image)
        report = retrieval_report(scorer, data, cache)
        metrics = {**report.metrics, **bounds(recall_intervals(report.ranks, data.caption_image))}
        mlflow.log_metrics(metrics)
        log_retrieval_figures(report, data, name)
    print(
        f"{name}: i2t R@1 {shown(metrics, 'i2t_r1')}, t2i R@1 {shown(metrics, 't2i_r1')}, rsum {shown(metrics, 'rsum')}"
    )
    return {"matcher": name, **metrics, "_ranks": report.ranks, "_data": data, "_skipped": skipped}


@tracked_flow("evaluate")
def evaluate(params: EvaluateParams = EvaluateParams()) -> list[dict[str, Any]]:
    """Retrieval metrics for each matcher on ``split``, logged as nested runs and a leaderboard table."""
    import matplotlib.pyplot as plt

    data, _ = load_data(params.dataset, check=False)  # the images are checked in the first matcher's encoding pass
    split = data.split(params.split)
    train = data.split("train") if "train" in data.splits else None
    cache = EmbeddingCache()
    with tracked_run(
        params.experiment, params.run_name or f"leaderboard on {split.name}", params.model_dump(exclude={"matchers"})
    ):
        mlflow.log_param("matchers", ", ".join(m.display_name() for m in params.matchers))
        rows = []
        progress = Tracker("evaluate", len(params.matchers), "matcher")
        for n, ref in enumerate(params.matchers, 1):
            row = evaluate_matcher(
                ref, split, train, params.experiment, cache, params.dataset.on_bad_image if n == 1 else None
            )
            if n == 1:  # every matcher is scored on the images the first one could read
                split = row["_data"]
                log_dataset(split, row["_skipped"])
            rows.append({k: v for k, v in row.items() if k not in ("_data", "_skipped")})
            progress.advance(note=f"{row['matcher']} rsum {row['rsum']:.1f}")
        progress.finish()
        fig = recall_at_k_figure({r["matcher"]: r.pop("_ranks") for r in rows})
        mlflow.log_figure(fig, "recall_at_k.png")
        plt.close(fig)
        board = pd.DataFrame(rows)[LEADERBOARD_COLUMNS].sort_values("rsum", ascending=False).reset_index(drop=True)
        log_table(board, "leaderboard.csv")
        best = board.iloc[0]
        mlflow.set_tag("leader", best["matcher"])
        mlflow.log_metrics({k: float(best[k]) for k in LEADERBOARD_COLUMNS[1:]})
        create_table_artifact(
            key="leaderboard",
            table=[
                {"matcher": row["matcher"], **{m: shown(row, m) for m in SHOWN}} for row in board.to_dict("records")
            ],
            description=(
                f"Retrieval on {split.name} ({len(split)} images, {len(split.captions)} captions); "
                "95% intervals by bootstrap over the test images"
            ),
        )
    return board.to_dict("records")
