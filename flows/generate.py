"""The ``generate`` flow: run a generator plugin on images (captioning) or prompts (text to image)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.tasks import load_data, log_dataset
from itm_core.config import ComponentParams, GenerateParams
from itm_core.data import DataError, load_images
from itm_core.registry import create
from itm_core.tracking import log_table, tracked_run


def caption_grid(images: list[Any], texts: list[str], columns: int = 4) -> Any:
    """A matplotlib figure: each image with its text beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, text in zip(axes.flat, images, texts):
        ax.imshow(img)
        ax.set_title("\n".join(textwrap.wrap(text, 32)), fontsize=8)
    fig.tight_layout()
    return fig


@task(name="generate", cache_policy=NO_CACHE)
def run_generator(params: GenerateParams, inputs: list[Any]) -> list[Any]:
    generator = create("generator", params.generator, **params.generator_options)
    return generator.generate(inputs)


@task(name="score", cache_policy=NO_CACHE)
def score_captions(metrics: list[ComponentParams], predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Every metric (task ``captioning``) on the captions against all references of each image."""
    values: dict[str, float] = {}
    for params in metrics:
        metric = create("metric", params.name, **params.options)
        if metric.task != "captioning":
            raise ValueError(f"metric {params.name!r} has task {metric.task!r}; generated captions are scored by 'captioning' metrics")
        values.update(metric.compute(predictions=predictions, references=references))
    return values


@flow(name="generate", log_prints=True)
def generate(params: GenerateParams = GenerateParams()) -> list[dict[str, Any]]:
    """Captions for images (or images for prompts) by a generator, saved as a table and a grid in MLflow."""
    import matplotlib.pyplot as plt

    from itm_core.registry import spec

    task_kind = spec("generator", params.generator).metadata.get("task", "image-to-text")
    if params.images:
        missing = [p for p in params.images if not Path(p).is_file()]
        if missing:
            raise DataError(f"generate: image files not found: {', '.join(missing)}")
        paths, references = list(params.images), [[] for _ in params.images]
        data = skipped = None
    else:
        data, skipped = load_data(params.dataset)
        split = data.split(params.split).head(params.num_images)
        paths = [str(p) for p in split.image_paths()]
        references = [split.captions_of(i) for i in range(len(split))]
    with tracked_run(params.experiment, params.run_name or params.generator, params.model_dump()):
        if data is not None:
            log_dataset(split, skipped)
        if task_kind == "text-to-image":
            prompts = [refs[0] for refs in references if refs]
            if not prompts:
                raise DataError("generate: a text-to-image generator needs prompts from a dataset split, not image files")
            outputs = run_generator(params, prompts)
            rows = [{"prompt": p, "reference_image": path} for p, path in zip(prompts, paths)]
            fig = caption_grid(outputs, prompts)
            artifact = "image_grid.png"
        else:
            images = load_images([Path(p) for p in paths])
            outputs = run_generator(params, images)
            rows = [{"image": path, "caption": c, "reference": refs[0] if refs else ""} for path, c, refs in zip(paths, outputs, references)]
            fig = caption_grid(images, [str(c) for c in outputs])
            artifact = "caption_grid.png"
            if params.metrics:
                if params.images:
                    raise DataError("generate: metrics need references; take the images from a dataset split instead of image files")
                scores = score_captions(params.metrics, [str(c) for c in outputs], references)
                mlflow.log_metrics(scores)
                print(f"scores: {scores}")
        table = pd.DataFrame(rows)
        log_table(table, "generations.csv")
        mlflow.log_figure(fig, artifact)
        plt.close(fig)
        create_table_artifact(key="generations", table=table.to_dict("records"), description=f"{params.generator} on {len(rows)} inputs")
        for row in rows[:5]:
            print(row)
    return rows
