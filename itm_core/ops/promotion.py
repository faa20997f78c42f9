"""Promotion of a registered model version to ``champion``: decided under a lock, so that concurrent
retrains cannot overwrite a better champion, and only on the same evaluation data."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from itm_core.ops.tracking import CHAMPION


def champion_version(registered_model: str) -> Any | None:
    """The model version holding the ``champion`` alias, or ``None``."""
    try:
        return MlflowClient().get_model_version_by_alias(registered_model, CHAMPION)
    except MlflowException:
        return None


@dataclass
class Promotion:
    promoted: bool
    metric: str
    new_value: float
    champion_value: float | None
    previous_version: str | None
    new_version: str

    def reason(self) -> str:
        if self.previous_version is None:
            return f"promoted v{self.new_version}: first model, {self.metric}={self.new_value:.4f}"
        verb = "promoted" if self.promoted else "kept champion"
        cmp = ">" if self.promoted else "<="
        return (
            f"{verb} v{self.new_version if self.promoted else self.previous_version}: "
            f"new {self.metric}={self.new_value:.4f} {cmp} champion v{self.previous_version} "
            f"{self.metric}={self.champion_value:.4f} on the same test data"
        )


@contextlib.contextmanager
def promotion_lock(registered_model: str, timeout_s: float = 1800) -> Iterator[None]:
    """Held while a run reads the champion, scores it and maybe moves the alias, so that concurrent
    runs decide one after the other. Always a file lock under ``$ITM_LOCK_DIR`` (default
    ``$ITM_HOME/locks``; on a shared file system it spans machines); with a Prefect server
    configured (``PREFECT_API_URL``), also a Prefect global concurrency limit of one slot
    (``itm-promote-<model>``, leased, so a crashed holder frees it), which spans every machine that
    uses that server."""
    import fcntl
    import time

    folder = Path(os.environ.get("ITM_LOCK_DIR") or Path(os.environ.get("ITM_HOME", ".itm")) / "locks")
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in registered_model)
    with open(folder / f"promote-{safe}.lock", "w") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {timeout_s:.0f} s for the promotion lock of {registered_model!r} ({handle.name})"
                    ) from None
                time.sleep(0.2)
        try:
            with _prefect_slot(f"itm-promote-{safe}", timeout_s):
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _prefect_slot(name: str, timeout_s: float) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value() or not os.environ.get("PREFECT_API_URL"):
        yield  # an ephemeral server is private to this process: the file lock is what serialises
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True):
        yield


def register_and_promote_version(
    registered_model: str, log_model: Any, metric: str, new_value: float, score_version: Any
) -> tuple[Any, Promotion]:
    """Register a new version (``log_model()``), then, under :func:`promotion_lock`, re-read the
    champion, score it on the same test data (``score_version(version)``) and move ``champion``
    only when the new version is strictly better. Concurrent runs therefore leave the best version
    as champion, whatever order they finish in."""
    info = log_model()
    version = str(info.registered_model_version)
    with promotion_lock(registered_model):
        previous = champion_version(registered_model)
        champion_value = None
        if previous is not None:
            champion_value = float(score_version(str(previous.version)))
            mlflow.log_metric(f"champion_test_{metric}", champion_value)
        decision = promote_if_better(registered_model, version, metric, new_value, champion_value, previous)
    mlflow.set_tags(
        {
            "promotion.decision": decision.reason(),
            "promotion.metric": metric,
            "promotion.promoted": str(decision.promoted),
            "model_version": version,
        }
    )
    print(decision.reason())
    return info, decision


def promote_if_better(
    registered_model: str,
    new_version: str,
    metric: str,
    new_value: float,
    champion_value: float | None,
    previous: Any | None,
) -> Promotion:
    """Move ``champion`` to ``new_version`` when there is none or the new model scores strictly higher."""
    decision = Promotion(
        promoted=previous is None or new_value > (champion_value if champion_value is not None else float("-inf")),
        metric=metric,
        new_value=new_value,
        champion_value=champion_value,
        previous_version=None if previous is None else str(previous.version),
        new_version=str(new_version),
    )
    client = MlflowClient()
    if decision.promoted:
        client.set_registered_model_alias(registered_model, CHAMPION, str(new_version))
    client.set_model_version_tag(registered_model, str(new_version), "promotion", decision.reason())
    return decision
