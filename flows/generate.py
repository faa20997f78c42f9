"""The ``generate`` flow: run a generator plugin on images (captioning) or prompts (text to image)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.retry import transient_only
from flows.tasks import load_data, log_dataset, read_checked
from itm_core.config import ComponentParams, GenerateParams
from itm_core.contract.registry import create
from itm_core.data import DataError, ImageTextSet, SkippedImage, load_images
from itm_core.errors import ParamsError
from itm_core.ops.plots import log_grid
from itm_core.ops.tracking import log_table, tracked_flow, tracked_run


@task(name="generate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=transient_only)
def run_generator(params: GenerateParams, inputs: list[Any]) -> list[Any]:
    generator = create("generator", params.generator, **params.generator_options)
    return generator.generate(inputs)


@task(name="score", cache_policy=NO_CACHE)
def score_outputs(metrics: list[ComponentParams], task_kind: str, inputs: dict[str, Any]) -> dict[str, float]:
    """Every metric on the outputs; a metric's task must match the generator's (``captioning`` for
    image-to-text, ``text-to-image`` for text-to-image)."""
    wanted = "captioning" if task_kind == "image-to-text" else "text-to-image"
    values: dict[str, float] = {}
    for params in metrics:
        metric = create("metric", params.name, **params.options)
        if metric.task != wanted:
            raise ParamsError(
                f"metric {params.name!r} has task {metric.task!r}; outputs of a {task_kind} generator are scored by "
                f"{wanted!r} metrics"
            )
        values.update(metric.compute(**inputs))
    return values


def read_prompts(params: GenerateParams) -> list[str]:
    """``prompts`` plus the lines of ``prompts_file`` (blank lines skipped)."""
    prompts = list(params.prompts)
    if params.prompts_file:
        path = Path(params.prompts_file)
        try:
            prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"generate: cannot read prompts_file {str(path)!r}: {exc}") from None
        if not prompts:
            raise DataError(f"generate: prompts_file {str(path)!r} has no prompts")
    return prompts


def save_images(images: list[Any], folder: str) -> list[str]:
    """Each generated image as a PNG artifact under ``folder``; their artifact paths."""
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, img in enumerate(images):
            name = f"{n:04d}.png"
            img.save(Path(tmp) / name)
            names.append(f"{folder}/{name}")
        mlflow.log_artifacts(tmp, folder)
    return names


def uses_distractors(metrics: list[ComponentParams]) -> bool:
    return any(m.name == "r_precision" for m in metrics)


@tracked_flow("generate")
def generate(params: GenerateParams = GenerateParams()) -> dict[str, Any]:
    """Captions for images, or images for prompts, by a generator; saved as a table, a grid and files
    in MLflow and scored with the chosen metrics. Returns the run id, the generations, the scores and
    notes about what was adjusted (fewer images than asked, where distractors came from)."""
    from itm_core.contract.registry import spec

    task_kind = spec("generator", params.generator).metadata.get("task", "image-to-text")
    prompts = read_prompts(params)
    if task_kind == "image-to-text" and prompts:
        raise DataError(f"generate: {params.generator!r} captions images; prompts are for text-to-image generators")
    if task_kind == "text-to-image" and params.images:
        raise DataError(
            f"generate: {params.generator!r} draws images from prompts; give prompts, prompts_file or a dataset split, "
            "not image files"
        )
    notes: list[str] = []
    if prompts:
        from itm_core.models.text_to_image import check_prompts

        notes += check_prompts(prompts)
    data: ImageTextSet | None = None
    split: ImageTextSet | None = None
    skipped: list[SkippedImage] = []
    decoded: list[Any] | None = None
    references: list[list[str]] = []
    if params.images:
        missing = [p for p in params.images if not Path(p).is_file()]
        if missing:
            raise DataError(f"generate: image files not found: {', '.join(missing)}")
        paths, references = list(params.images), [[] for _ in params.images]
    elif not prompts:
        data, _ = load_data(params.dataset, check=False)  # only the images used are read, each once, and checked then
        split, decoded, skipped = read_checked(
            data.split(params.split), params.dataset.on_bad_image, limit=params.num_images
        )
        if len(split) < params.num_images:
            notes.append(
                f"num_images is {params.num_images} but split {params.split!r} of {data.name} has {len(split)} images: "
                f"generated for all {len(split)}"
            )
        paths = [str(p) for p in split.image_paths()]
        references = split.captions_by_image()
    elif uses_distractors(params.metrics):
        # r_precision ranks each prompt among distractors from the split's captions, as with split prompts
        data, skipped = load_data(params.dataset, check=False)  # its captions only: no image is read
        notes.append(f"r_precision draws its distractors from the captions of split {params.split!r} of {data.name}")
    for note in notes:
        print(f"note: {note}")
    with tracked_run(params.experiment, params.run_name or params.generator, params.model_dump()) as run:
        if split is not None:
            log_dataset(split, skipped)
        if notes:
            mlflow.set_tag("generate.notes", " | ".join(notes)[:5000])
        scores: dict[str, float] = {}
        if task_kind == "text-to-image":
            if not prompts:
                prompts = [refs[0] for refs in references]
            outputs = run_generator(params, prompts)
            files = save_images(outputs, "images")
            rows = [{"prompt": p, "image": f} for p, f in zip(prompts, files)]
            if split is not None:
                for row, path in zip(rows, paths):
                    row["reference_image"] = path
            log_grid(outputs[:32], prompts[:32], "image_grid.png")
            if params.metrics:
                inputs: dict[str, Any] = {"images": outputs, "prompts": prompts}
                if data is not None:
                    inputs["distractors"] = data.split(params.split).captions
                if split is not None:
                    inputs.update(reference_images=decoded, equivalents=references)
                scores = score_outputs(params.metrics, task_kind, inputs)
        else:
            images = decoded if decoded is not None else load_images([Path(p) for p in paths])
            outputs = run_generator(params, images)
            rows = [
                {"image": path, "caption": c, "reference": refs[0] if refs else ""}
                for path, c, refs in zip(paths, outputs, references)
            ]
            log_grid(images[:32], [str(c) for c in outputs[:32]], "caption_grid.png")
            if params.metrics:
                if params.images:
                    refless = [m.name for m in params.metrics if m.name != "clipscore"]
                    if refless:
                        raise DataError(
                            f"generate: metrics {refless} need references; take the images from a dataset split "
                            "instead of image files"
                        )
                scores = score_outputs(
                    params.metrics,
                    task_kind,
                    {"predictions": [str(c) for c in outputs], "references": references, "images": images},
                )
        if scores:
            mlflow.log_metrics(scores)
            print("scores: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        table = pd.DataFrame(rows)
        log_table(table, "generations.csv")
        create_table_artifact(
            key="generations", table=table.to_dict("records"), description=f"{params.generator} on {len(rows)} inputs"
        )
        if scores:
            create_markdown_artifact(
                key="generation-scores",
                markdown="| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v:.4f} |\n" for k, v in scores.items()),
            )
    return {"run_id": run.info.run_id, "generated": len(rows), "scores": scores, "notes": notes, "generations": rows}
