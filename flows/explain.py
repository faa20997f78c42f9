"""The ``explain`` flow: why a matcher scores an image-text pair as it does, by one or more explainers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.tasks import load_data, read_checked
from itm_core.config import ComponentParams, ExplainParams
from itm_core.contract.explaining import Attribution, PairScorer
from itm_core.contract.registry import create, spec
from itm_core.data import DataError, open_image
from itm_core.errors import ParamsError
from itm_core.judge.explain import attributions_figure, explain_with
from itm_core.ops.scorers import build_scorer
from itm_core.ops.tracking import log_table, tracked_flow, tracked_run


def build_explainer(p: ComponentParams, grid: int | None = None) -> Any:
    """The explainer plugin; ``occlusion`` takes ``grid`` unless its options say otherwise."""
    options = dict(p.options)
    if p.name == "occlusion" and grid is not None:
        options.setdefault("grid", grid)
    return create("explainer", p.name, **options)


def cannot_serve(name: str, scorer: PairScorer) -> str | None:
    """Why explainer ``name`` cannot explain this matcher (it needs gradients its image encoder lacks), or None."""
    if spec("explainer", name).metadata.get("needs") == "encode_differentiable" and not scorer.differentiable():
        encoder = type(scorer.image_encoder()).__name__
        return f"needs gradients through the image encoder; {encoder} has no encode_differentiable"
    return None


@task(name="explain", cache_policy=NO_CACHE)
def explain_task(explainer: Any, name: str, scorer: PairScorer, image: Any, text: str) -> Attribution:
    return explain_with(explainer, name, scorer, image, text)


def heat_markdown(found: list[Attribution]) -> str:
    """The explanations as Markdown: a per-word table and each heat map as numbers (coarsened to 8 x 8 at most)."""
    from itm_core.judge.faithfulness import cell_heat

    out = f"score **{found[0].score:.4f}**\n\n"
    bars = [a for a in found if a.word_scores is not None]
    if bars:
        out += (
            "### Per word\n\n| word | "
            + " | ".join(a.explainer for a in bars)
            + " |\n|---|"
            + "---|" * len(bars)
            + "\n"
        )
        for n, w in enumerate(bars[0].words):
            out += f"| {w} | " + " | ".join(f"{(a.word_scores or [])[n]:+.4f}" for a in bars) + " |\n"
    for a in found:
        if a.heat is None:
            continue
        grid = a.heat if max(a.heat.shape) <= 8 else cell_heat(a.heat, 8)
        out += (
            f"\n### {a.explainer} (row 0 is the top)\n\n| |"
            + "".join(f" {c} |" for c in range(grid.shape[1]))
            + "\n|---|"
            + "---|" * grid.shape[1]
            + "\n"
        )
        out += "".join(f"| **{r}** |" + "".join(f" {v:+.3f} |" for v in grid[r]) + "\n" for r in range(grid.shape[0]))
    return out


@tracked_flow("explain")
def explain(params: ExplainParams = ExplainParams()) -> dict[str, Any]:
    """Each explainer's heat map over the image and/or per-word values for the text, side by side in
    one figure (``explanation.png``), with ``heat_<explainer>.csv`` and ``words_<explainer>.csv``
    (and ``occlusion_heat.csv``, ``word_contributions.csv`` from the default pair of explainers)
    logged to MLflow and shown as Prefect artifacts."""
    import matplotlib.pyplot as plt

    for p in params.explainers:  # an unknown name fails now, naming the known ones
        spec("explainer", p.name)
    explainers = [(p.name, build_explainer(p, params.grid)) for p in params.explainers]
    data, _ = load_data(params.dataset, check=False)  # only the image explained is read, and checked then
    train = data.split("train") if "train" in data.splits else None
    if params.image:
        if not Path(params.image).is_file():
            raise DataError(f"explain: image file not found: {params.image}")
        image_path, image = params.image, open_image(Path(params.image))
        text = params.text
    else:  # the split's first usable image and its first caption
        first, decoded, _ = read_checked(data.split(params.split), params.dataset.on_bad_image, limit=1)
        image_path, image = str(first.image_path(0)), decoded[0]
        text = params.text or first.captions_of(0)[0]
    if not text or not text.split():
        raise ParamsError("explain: give the text to explain with the image")
    scorer = PairScorer(build_scorer(params.matcher, train))
    skipped = {name: reason for name, _ in explainers if (reason := cannot_serve(name, scorer))}
    if len(skipped) == len(explainers):
        raise ParamsError(
            "explain: no chosen explainer can explain this matcher: "
            + "; ".join(f"{n}: {r}" for n, r in skipped.items())
        )
    explainers = [(name, e) for name, e in explainers if name not in skipped]
    # Logged with the image and text resolved: each parameter key is logged once, with the value used.
    logged = params.model_copy(update={"image": image_path, "text": text}).model_dump()
    with tracked_run(params.experiment, params.run_name or f"explain {params.matcher.display_name()}", logged) as run:
        found = [explain_task(explainer, name, scorer, image, text) for name, explainer in explainers]
        for name, reason in skipped.items():
            print(f"{name}: skipped: {reason}")
        if skipped:
            mlflow.set_tag("explain.skipped", "; ".join(f"{n}: {r}" for n, r in skipped.items()))
        mlflow.log_metric("score", found[0].score)
        mlflow.log_metrics({f"seconds_{a.explainer}": a.seconds for a in found})
        fig = attributions_figure(image, text, found)
        mlflow.log_figure(fig, "explanation.png")
        plt.close(fig)
        for a in found:
            if a.heat is not None:
                log_table(
                    pd.DataFrame(a.heat),
                    "occlusion_heat.csv" if a.explainer == "occlusion" else f"heat_{a.explainer}.csv",
                )
            if a.word_scores is not None:
                name = "word_contributions.csv" if a.explainer == "word-deletion" else f"words_{a.explainer}.csv"
                log_table(pd.DataFrame({"word": a.words, "contribution": a.word_scores}), name)
        create_markdown_artifact(
            key="explanation",
            markdown=f"# {text}\n\n" + heat_markdown(found),
            description=f"{params.matcher.display_name()} on {image_path}",
        )
        uri = mlflow.get_tracking_uri()
        if uri.startswith(("http://", "https://")):  # the tracking server serves the figure to the Prefect UI
            create_image_artifact(
                image_url=f"{uri.rstrip('/')}/get-artifact?path=explanation.png&run_uuid={run.info.run_id}",
                key="explanation-heat-map",
                description="each explainer's heat map and per-word values",
            )
        words = next((a for a in found if a.word_scores is not None), None)
        heat = next((a for a in found if a.heat is not None), None)
        print(
            f"score {found[0].score:.4f}"
            + (f"; words that matter most ({words.explainer}): {words.top_words()}" if words else "")
        )
    return {
        "run_id": run.info.run_id,
        "score": found[0].score,
        "image": image_path,
        "text": text,
        "words": dict(zip(words.words, words.word_scores or [])) if words else {},
        "heat": np.asarray(heat.heat).tolist() if heat else [],
        "explainers": {
            a.explainer: {
                "heat": None if a.heat is None else np.asarray(a.heat).tolist(),
                "word_scores": a.word_scores,
                "seconds": a.seconds,
            }
            for a in found
        },
        "skipped": skipped,
    }
