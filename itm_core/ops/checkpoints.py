"""Training checkpoints of the retrain flow: written locally every epoch, logged to the MLflow run
every few epochs, and found again by ``training.resume``.

A checkpoint is plain data (tensors, numbers, lists, dicts) saved with ``torch.save`` and read with
``torch.load(weights_only=True)``, so reading one runs no code. Runs are matched by a resume key: a
hash of the parameters (less ``resume`` itself) and of the data, stored as the run tag ``itm.resume_key``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException

from itm_core.home import itm_home

ARTIFACT_DIR = "checkpoint"
FILE = "last.pt"


def resume_key(params: dict[str, Any], data_fingerprint: str) -> str:
    params = json.loads(json.dumps(params, default=str))
    training = params.get("training", {})
    training.pop("resume", None)
    training.pop("checkpoint_every", None)
    return hashlib.sha256(json.dumps([params, data_fingerprint], sort_keys=True).encode()).hexdigest()[:20]


def local_path(key: str) -> Path:
    return itm_home() / "checkpoints" / f"{key}.pt"


class Checkpointer:
    """The ``checkpoint`` callback of training: every epoch to the local file (written whole, then
    renamed), every ``every`` epochs (and at the end) to the active MLflow run."""

    def __init__(self, key: str, every: int) -> None:
        self.path, self.every = local_path(key), every

    def __call__(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)
        self.publish(state["epoch"], state["done"])

    def publish(self, epoch: int, done: bool) -> None:
        """Log the local checkpoint (written for ``epoch``) to the active run when it is due."""
        if self.every and (epoch % self.every == 0 or done):
            mlflow.log_artifact(str(self.path), ARTIFACT_DIR)

    def clear(self) -> None:
        """After a finished run, the local checkpoint is no longer needed."""
        self.path.unlink(missing_ok=True)


def find_resumable(experiment: str, key: str) -> tuple[Any, dict[str, Any]] | None:
    """The newest unfinished run with ``key`` and its last checkpoint (the local file when it is
    there and newer, else the one logged to the run), or ``None``."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`itm.resume_key` = '{key}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        return None
    run = runs[0]
    states = []
    if local_path(key).is_file():
        states.append(torch.load(local_path(key), weights_only=True))
    try:
        folder = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path=f"{ARTIFACT_DIR}/{FILE}", dst_path=tempfile.mkdtemp()
        )
        states.append(torch.load(folder, weights_only=True))
    except (MlflowException, OSError):
        pass
    if not states:
        return None
    return run, max(states, key=lambda s: int(s["epoch"]))
