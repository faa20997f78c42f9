"""The ``explain`` flow: why a matcher scores an image-text pair as it does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.tasks import load_data
from itm_core.config import ExplainParams
from itm_core.data import DataError, open_image
from itm_core.judge.evaluation import build_scorer
from itm_core.judge.explain import Explanation, explain_pair, explanation_figure
from itm_core.ops.tracking import FLOW_HOOKS, log_table, tracked_run


@task(name="explain", cache_policy=NO_CACHE)
def explain_task(scorer: Any, image: Any, text: str, grid: int) -> Explanation:
    return explain_pair(scorer, image, text, grid)


def heat_markdown(explanation: Explanation) -> str:
    """The explanation as Markdown: the per-word table and the occlusion grid as numbers."""
    words = "".join(f"| {w} | {v:+.4f} |\n" for w, v in zip(explanation.words, explanation.word_contributions))
    grid = explanation.heat
    header = "| |" + "".join(f" {c} |" for c in range(grid.shape[1])) + "\n|---|" + "---|" * grid.shape[1] + "\n"
    rows = "".join(f"| **{r}** |" + "".join(f" {v:+.3f} |" for v in grid[r]) + "\n" for r in range(grid.shape[0]))
    return (f"score **{explanation.score:.4f}**\n\n### Per word (score drop without the word)\n\n| word | contribution |\n|---|---|\n{words}"
            f"\n### Occlusion (score drop when the cell is hidden; row 0 is the top)\n\n{header}{rows}")


@flow(name="explain", log_prints=True, **FLOW_HOOKS)
def explain(params: ExplainParams = ExplainParams()) -> dict[str, Any]:
    """Occlusion heat map over the image and leave-one-word-out contributions for the text, logged to
    MLflow (``explanation.png``, ``word_contributions.csv``) and shown as Prefect artifacts."""
    import matplotlib.pyplot as plt

    data, _ = load_data(params.dataset)
    train = data.split("train") if "train" in data.splits else None
    if params.image:
        if not Path(params.image).is_file():
            raise DataError(f"explain: image file not found: {params.image}")
        image_path = params.image
    else:
        image_path = str(data.split(params.split).image_path(0))
    text = params.text or (data.split(params.split).captions_of(0)[0] if not params.image else None)
    if not text:
        raise ValueError("explain: give the text to explain with the image")
    image = open_image(Path(image_path))
    scorer = build_scorer(params.matcher, train)
    # Logged with the image and text resolved: each parameter key is logged once, with the value used.
    logged = params.model_copy(update={"image": image_path, "text": text}).model_dump()
    with tracked_run(params.experiment, params.run_name or f"explain {params.matcher.display_name()}", logged) as run:
        explanation = explain_task(scorer, image, text, params.grid)
        mlflow.log_metric("score", explanation.score)
        fig = explanation_figure(image, text, explanation)
        mlflow.log_figure(fig, "explanation.png")
        plt.close(fig)
        log_table(pd.DataFrame({"word": explanation.words, "contribution": explanation.word_contributions}), "word_contributions.csv")
        log_table(pd.DataFrame(explanation.heat), "occlusion_heat.csv")
        create_markdown_artifact(key="explanation", markdown=f"# {text}\n\n" + heat_markdown(explanation),
                                 description=f"{params.matcher.display_name()} on {image_path}")
        uri = mlflow.get_tracking_uri()
        if uri.startswith(("http://", "https://")):  # the tracking server serves the figure to the Prefect UI
            create_image_artifact(image_url=f"{uri.rstrip('/')}/get-artifact?path=explanation.png&run_uuid={run.info.run_id}",
                                  key="explanation-heat-map", description="occlusion heat map and per-word contributions")
        print(f"score {explanation.score:.4f}; words that matter most: {explanation.top_words()}")
    return {"run_id": run.info.run_id, "score": explanation.score, "image": image_path, "text": text,
            "words": dict(zip(explanation.words, explanation.word_contributions)), "heat": explanation.heat.tolist()}
