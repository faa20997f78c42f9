"""The ``search`` flow: the top k images for a text (or images or captions for an image), from an index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect.artifacts import create_table_artifact

from itm_core.config import SearchParams
from itm_core.data import DataError, load_images, open_image
from itm_core.errors import ParamsError
from itm_core.ops.plots import log_grid
from itm_core.ops.search import Searcher
from itm_core.ops.tracking import tracked_flow, tracked_run


@tracked_flow("search")
def search(params: SearchParams = SearchParams()) -> dict[str, Any]:
    """Results as a Prefect table (with links to the result images when MLflow is a tracking server)
    and an MLflow image grid."""
    if params.image:
        if not Path(params.image).is_file():
            raise DataError(f"search: image file not found: {params.image}")
    elif not (params.text or "").strip():
        raise ParamsError("search: give a text (or an image) to search with")
    searcher = Searcher.open(params.index, params.matcher, params.target)
    query = params.image or params.text
    with tracked_run(params.experiment, params.run_name or f"search: {str(query)[:60]}", params.model_dump()) as run:
        if params.image:
            (results,) = searcher.search_images([open_image(Path(params.image))], params.k)
        else:
            (results,) = searcher.search_texts([params.text or ""], params.k)
        mlflow.log_table(results, "results.json")
        mlflow.set_tag("index.matcher", searcher.index.meta.get("matcher_id", ""))
        shown = results.head(32)
        labels = [
            f"#{r} {s:.3f}" + (f": {c}" if params.target == "captions" else "")
            for r, s, c in zip(shown["rank"], shown["score"], shown["caption"])
        ]
        log_grid(load_images([Path(p) for p in shown["image"]]), labels, "search_results.png")
        uri = mlflow.get_tracking_uri()
        rows = results.to_dict("records")
        for row in rows:
            row["score"] = round(float(row["score"]), 4)
            if uri.startswith(
                ("http://", "https://")
            ):  # the tracking server serves the grid; images are local files of the collection
                row["grid"] = f"{uri.rstrip('/')}/get-artifact?path=search_results.png&run_uuid={run.info.run_id}"
        create_table_artifact(key="search-results", table=rows, description=f"top {params.k} for {query!r}")
        for row in rows[:5]:
            print(
                f"#{row['rank']} {row['score']:.4f} {row['image']}"
                + (f" {row['caption']!r}" if params.target == "captions" else "")
            )
    return {"run_id": run.info.run_id, "query": query, "results": rows}
