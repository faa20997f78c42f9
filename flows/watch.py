"""The ``watch-data`` flow: has the data changed? The event it emits can start a retrain (see the
``retrain-on-new-data`` trigger in ``prefect.yaml``, off as shipped)."""

from __future__ import annotations

from typing import Any

from flows.tasks import load_data, log_dataset
from itm_core.config import WatchParams
from itm_core.ops.tracking import tracked_flow, tracked_run


@tracked_flow("watch-data")
def watch_data(params: WatchParams = WatchParams()) -> dict[str, Any]:
    """Fingerprint each dataset in a short MLflow run of ``itm-watch`` (its splits in the Datasets
    panel); a dataset new to this experiment or changed since its previous check emits
    ``itm.dataset.changed``."""
    seen = []
    for dataset in params.datasets:
        data, _ = load_data(dataset, check=False)
        with tracked_run(params.experiment, f"watch {data.name}", {"dataset": dataset.model_dump()}):
            fingerprint, previous = log_dataset(data, [])
            changed = previous != fingerprint
            state = f"changed (was {previous or 'not seen'})" if changed else "unchanged"
            print(f"{data.name}: {fingerprint}, {state}")
            seen.append({"dataset": data.name, "fingerprint": fingerprint, "previous": previous, "changed": changed})
    return {"datasets": seen}
