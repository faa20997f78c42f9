"""Lineage: which data a run read, in MLflow's Datasets panel, and whether it changed since the last run.

Each split a run reads is logged with ``mlflow.log_input`` as a dataset named ``<dataset>:<split>``
whose digest is the split's fingerprint (the same hash as ``data.fingerprint``), its source the
folder the images are read from, its schema the pair table (image, caption, split), and its context
the split. A model version registered from the run shows them through its source run.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from itm_core.data import ImageTextSet
from itm_core.ops import events


def pair_table(data: ImageTextSet) -> pd.DataFrame:
    """One row per caption: the image path (relative to the data's root), the caption and the split."""
    return pd.DataFrame(
        {
            "image": [data.images[i] for i in data.caption_image],
            "caption": data.captions,
            "split": [data.image_split[i] for i in data.caption_image],
        }
    )


def base_name(data: ImageTextSet) -> str:
    """The dataset's name without the ``:split`` a split subset carries."""
    return data.name.split(":")[0]


def log_inputs(data: ImageTextSet) -> None:
    """Every split of ``data`` as an input of the active run (see the module's docstring)."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.pandas_dataset import from_pandas

    # the image folder as a local source (named so: MLflow registers its local source class twice
    # and warns when left to resolve a path itself)
    local: Any = next(s for s in get_registered_sources() if s._get_source_type() == "local")
    source = local(str(data.root.resolve()))
    table = pair_table(data)
    for split in data.splits:
        part = data.split(split)
        dataset = from_pandas(
            table[table["split"] == split].reset_index(drop=True),
            source=source,
            name=f"{base_name(data)}:{split}",
            digest=part.fingerprint(),
        )
        _log_input(dataset, split)


def _log_input(dataset: Any, split: str, attempts: int = 5) -> None:
    """``mlflow.log_input``, tried again when a concurrent run inserted the same dataset between
    MLflow's check for it and its own insert (the store's unique constraint fails; on the next try
    the dataset exists and is linked)."""
    import time

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=split)
            return
        except MlflowException as error:
            conflict = "UNIQUE constraint" in str(error) or "IntegrityError" in str(error)
            if not conflict or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def previous_fingerprint(data: ImageTextSet, run_id: str) -> str | None:
    """``data.fingerprint`` of the newest earlier run of the same experiment that read this dataset
    (the same name and image folder); ``None`` when there is none."""
    run = mlflow.get_run(run_id)
    name, source = base_name(data), str(data.root.resolve()).replace("'", "\\'")
    try:
        earlier = mlflow.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`data.name` = '{name}' and tags.`data.source` = '{source}'",
            order_by=["attributes.start_time DESC"],
            max_results=5,
            output_format="list",
        )
    except MlflowException:
        return None
    for r in earlier:
        if r.info.run_id != run_id and "data.fingerprint" in r.data.params:
            return str(r.data.params["data.fingerprint"])
    return None


def note_dataset(data: ImageTextSet, fingerprint: str) -> str | None:
    """Tag the active run with the dataset's name and folder, and emit ``itm.dataset.changed`` when
    its fingerprint differs from the one the previous run of this experiment recorded (or when no
    earlier run read it). Returns the previous fingerprint."""
    from prefect.runtime import flow_run

    active = mlflow.active_run()
    if active is None:
        return None
    previous = previous_fingerprint(data, active.info.run_id)
    mlflow.set_tags(
        {
            "data.name": base_name(data),
            "data.source": str(data.root.resolve()),
            "data.previous_fingerprint": previous or "none",
        }
    )
    if previous != fingerprint:
        labels: dict[str, Any] = {
            "prefect.resource.name": base_name(data),
            "itm.dataset.name": base_name(data),
            "itm.dataset.source": str(data.root.resolve()),
            "itm.dataset.fingerprint": fingerprint,
            "itm.dataset.previous": previous or "none",
            "itm.flow": flow_run.flow_name or "",
        }
        events.emit(events.DATASET_CHANGED, f"itm.dataset.{base_name(data)}", labels, {"images": len(data)})
    return previous
