"""The ``explain-benchmark`` flow: which explainer to trust, measured on test pairs."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.explain import build_explainer, cannot_serve
from flows.tasks import load_data, log_leaderboard, read_checked, records
from itm_core.config import ComponentParams, ExplainBenchmarkParams
from itm_core.contract.explaining import PairScorer
from itm_core.contract.registry import names, spec
from itm_core.errors import DataError
from itm_core.judge.explain import attributions_figure, explain_with
from itm_core.judge.faithfulness import Faithfulness, judge, named_object, random_reference
from itm_core.ops.scorers import build_scorer
from itm_core.ops.tracking import tracked_flow, tracked_run
from itm_core.progress import Tracker

PROGRESS_EVERY_S = 10.0  # an explainer's pass over the pairs reports at most this often
COLUMNS = [
    "explainer",
    "deletion_auc",
    "insertion_auc",
    "insertion_minus_deletion",
    "word_deletion_auc",
    "word_insertion_auc",
    "pointing_accuracy",
    "pointing_pairs",
    "seconds_per_explanation",
    "pairs",
    "note",
]


def choose_pairs(data: Any, n: int, single_object: bool) -> list[tuple[int, str, dict[str, float] | None]]:
    """``(image index, its first caption, the named object's region or None)`` for up to ``n`` images from the start."""
    objects = data.image_extras.get("objects")
    out = []
    for i in range(len(data)):
        region = named_object(objects[i]) if objects is not None else None
        if single_object and region is None:
            continue
        captions = data.captions_of(i)
        if captions:
            out.append((i, captions[0], region))
        if len(out) == n:
            break
    return out


def summarise(name: str, results: list[Faithfulness], seconds: list[float]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [getattr(r, key) for r in results if getattr(r, key) is not None]
        return float(np.mean(values)) if values else None

    pointed = [r.pointing for r in results if r.pointing is not None]
    row = {
        "explainer": name,
        "deletion_auc": mean("deletion"),
        "insertion_auc": mean("insertion"),
        "word_deletion_auc": mean("word_deletion"),
        "word_insertion_auc": mean("word_insertion"),
        "pointing_accuracy": float(np.mean(pointed)) if pointed else None,
        "pointing_pairs": len(pointed),
        "seconds_per_explanation": float(np.mean(seconds)) if seconds else None,
        "pairs": len(results),
    }
    deletion, insertion = mean("deletion"), mean("insertion")
    if deletion is not None and insertion is not None:
        row["insertion_minus_deletion"] = insertion - deletion
    return row


@task(name="explain-and-judge", cache_policy=NO_CACHE)
def run_explainer(
    p: ComponentParams, scorer: PairScorer, pairs: list[tuple[Any, str, Any]], params: ExplainBenchmarkParams
) -> tuple[dict[str, Any], list[Any]]:
    """One explainer over every pair, in a nested MLflow run: its faithfulness and its attributions."""
    explainer = build_explainer(p)
    with tracked_run(params.experiment, p.name, {"explainer": p.name, **p.options}, nested=True):
        results, seconds, found = [], [], []
        progress = Tracker(f"{p.name}: explaining and judging", len(pairs), "pair", every_s=PROGRESS_EVERY_S)
        for image, text, region in pairs:
            a = explain_with(explainer, p.name, scorer, image, text)
            found.append(a)
            seconds.append(a.seconds)
            results.append(judge(scorer, image, text, a, params.grid, params.steps, region))
            progress.advance()
        progress.finish()
        row = summarise(p.name, results, seconds)
        mlflow.log_metrics(
            {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None and k != "pairs"}
        )
    return row, found


@tracked_flow("explain-benchmark")
def explain_benchmark(params: ExplainBenchmarkParams = ExplainBenchmarkParams()) -> list[dict[str, Any]]:
    """Every explainer (or ``explainers``) on the same test pairs and matcher: deletion and insertion
    areas over image cells and words, pointing at the named object, seconds per explanation; a
    random order is the reference row. Logged as ``explainer_leaderboard.csv``, one nested run per
    explainer, a figure of every explainer on the first pair, and a Prefect table."""
    import matplotlib.pyplot as plt

    chosen = params.explainers or [ComponentParams(name=n) for n in names("explainer")]
    for p in chosen:
        spec("explainer", p.name)
    data, _ = load_data(params.dataset, check=False)  # only the images explained are read, and checked then
    split = data.split(params.split)
    train = data.split("train") if "train" in data.splits else None
    candidates = [i for i, _, _ in choose_pairs(split, len(split), params.single_object)]
    if not candidates:
        raise DataError(
            f"explain-benchmark: the {params.split} split has no "
            + (
                "single-object images with object positions (the data needs an 'objects' column with cx, cy, r)"
                if params.single_object
                else "captioned images"
            )
        )
    usable, decoded, _ = read_checked(split.subset(candidates), params.dataset.on_bad_image, limit=params.pairs)
    pairs = [
        (image, text, region)
        for image, (_, text, region) in zip(decoded, choose_pairs(usable, params.pairs, params.single_object))
    ]
    scorer = PairScorer(build_scorer(params.matcher, train))
    with tracked_run(
        params.experiment, params.run_name or f"explain benchmark {params.matcher.display_name()}", params.model_dump()
    ):
        rows: list[dict[str, Any]] = []
        first: list[Any] = []
        progress = Tracker("explain benchmark", len(chosen), "explainer")
        for p in chosen:
            reason = cannot_serve(p.name, scorer)
            if reason:
                row = {"explainer": p.name, "pairs": 0, "note": reason}
                print(f"{p.name}: skipped: {reason}")
            else:
                try:
                    row, found = run_explainer(p, scorer, pairs, params)
                    first.append(found[0])
                except ValueError as exc:  # an explainer this matcher cannot serve (no gradients through its encoder)
                    row = {"explainer": p.name, "note": str(exc), "pairs": 0}
                    print(f"{p.name}: skipped: {exc}")
            rows.append(row)
            progress.advance(note=f"{p.name} done")
        progress.finish()
        reference = [
            random_reference(scorer, image, text, params.seed + n, params.grid, params.steps, region)
            for n, (image, text, region) in enumerate(pairs)
        ]
        rows.append({**summarise("random (reference)", reference, []), "note": "cells and words in a random order"})
        board = pd.DataFrame(rows).reindex(columns=COLUMNS)
        log_leaderboard(
            board,
            "explainer-leaderboard",
            f"{len(pairs)} {params.split} pairs. Deletion: lower is better; insertion and pointing: higher is better.",
        )
        mlflow.log_metrics(
            {
                f"{r['explainer'].split(' ')[0]}_{k}": v
                for r in rows
                for k, v in r.items()
                if k in ("insertion_minus_deletion", "pointing_accuracy") and v is not None
            }
        )
        if first:
            fig = attributions_figure(pairs[0][0], pairs[0][1], first)
            mlflow.log_figure(fig, "explainers_first_pair.png")
            plt.close(fig)
        for r in rows:
            shown = ", ".join(
                f"{k} {r[k]:.3f}"
                for k in ("deletion_auc", "insertion_auc", "word_deletion_auc", "pointing_accuracy")
                if r.get(k) is not None
            )
            print(f"{r['explainer']}: {shown or r.get('note', '')}")
    return records(board)
