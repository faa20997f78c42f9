"""Promotion of a registered model version to ``champion``: decided on the same test data as the
champion, by a paired bootstrap on the promotion metric (or the rule ``promotion.policy`` names), and
under a lock, so that concurrent retrains decide one after the other."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from itm_core.contract.evidence import UnitScores
from itm_core.home import itm_home
from itm_core.judge.intervals import Interval, paired_difference
from itm_core.ops import events
from itm_core.ops.local_server import PRIVATE
from itm_core.ops.tracking import CHAMPION, prefect_context


def champion_version(registered_model: str) -> Any | None:
    """The model version holding the ``champion`` alias, or ``None``."""
    try:
        return MlflowClient().get_model_version_by_alias(registered_model, CHAMPION)
    except MlflowException:
        return None


class PromotionOptions(BaseModel):
    """When a newly trained version replaces the ``champion``. Challenger and champion are scored on the
    same test data; ``evidence`` promotes only when the paired bootstrap interval of the difference on
    the promotion metric lies wholly above zero, on at least ``min_test_images`` test units."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["evidence", "better", "never", "always"] = Field(
        "evidence",
        description=(
            "evidence: promote when the new version is better at the given confidence (paired bootstrap over the "
            "test images); better: when it scores higher at all; never: register only; always: promote every version"
        ),
    )
    min_test_images: int = Field(
        50, ge=1, description="with policy evidence, fewer test images (or prompts) than this never replace a champion"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence of the paired interval (evidence policy)")
    across_datasets: bool = Field(
        False,
        description=(
            "compare with a champion trained on other data (another dataset, or the same pairs split otherwise); "
            "off by default: give your own data its own registered_model"
        ),
    )


@dataclass(frozen=True)
class DataIdentity:
    """What a version was trained on: the dataset's name, its pairs' fingerprint and its split's."""

    name: str | None
    fingerprint: str | None
    splits: str | None = None

    @classmethod
    def of_run(cls, run_id: str) -> DataIdentity:
        params = MlflowClient().get_run(run_id).data.params
        return cls(params.get("dataset.name"), params.get("data.fingerprint"), params.get("data.splits_fingerprint"))

    def differs(self, other: DataIdentity) -> str | None:
        """How ``other`` (this version's data) differs from this (the champion's), or ``None`` when it is,
        as far as both record, the same."""
        if self.fingerprint and other.fingerprint and self.fingerprint != other.fingerprint:
            return (
                f"the champion's dataset {self.name!r} (pairs {self.fingerprint}), "
                f"this version's {other.name!r} (pairs {other.fingerprint})"
            )
        if self.splits and other.splits and self.splits != other.splits:
            return "the same pairs split otherwise (the champion may have trained on these test images)"
        return None


@dataclass
class Promotion:
    """The decision on one new version, and why."""

    promoted: bool
    metric: str
    new_value: float
    new_version: str
    policy: str = "evidence"
    champion_value: float | None = None
    previous_version: str | None = None
    difference: Interval | None = None
    why: str = ""

    def reason(self) -> str:
        if self.previous_version is None:
            return f"promoted v{self.new_version}: first model, {self.metric}={self.new_value:.4f}"
        head = (
            f"promoted v{self.new_version} over champion v{self.previous_version}"
            if self.promoted
            else f"kept champion v{self.previous_version} over v{self.new_version}"
        )
        return f"{head}: {self.why}"

    def outcome(self, info: Any) -> dict[str, Any]:
        """What a retrain flow returns about the version it registered (``info``: MLflow's model info)."""
        return {
            "model_version": str(info.registered_model_version),
            "promoted": self.promoted,
            "decision": self.reason(),
            "model_uri": info.model_uri,
        }

    def tags(self) -> dict[str, str]:
        tags = {
            "promotion.decision": self.reason(),
            "promotion.metric": self.metric,
            "promotion.promoted": str(self.promoted),
            "promotion.policy": self.policy,
        }
        if self.difference is not None:
            tags["promotion.interval"] = self.difference.signed(_digits(self.metric))
            tags["promotion.n"] = str(self.difference.n)
            tags["promotion.confidence"] = str(self.difference.confidence)
        return tags


def _digits(metric: str) -> int:
    return 1 if metric == "rsum" else 3


def decide(
    options: PromotionOptions,
    metric: str,
    new: UnitScores,
    new_version: str,
    champion: UnitScores | None = None,
    previous_version: str | None = None,
    other_data: str | None = None,
) -> Promotion:
    """The decision on ``new_version`` against the champion's scores on the same test units.
    ``other_data`` says how the champion's training data differs, when it does."""
    value = new.value(metric)
    if champion is None or previous_version is None:
        return Promotion(True, metric, value, new_version, options.policy, why="first model")
    diff = paired_difference(new, champion, metric, options.confidence)
    d = _digits(metric)
    evidence = f"{metric} {diff.signed(d)} on {diff.n} {new.unit}"
    decision = Promotion(False, metric, value, new_version, options.policy, champion.value(metric), previous_version)
    decision.difference = diff
    if options.policy == "always":
        decision.promoted, decision.why = True, f"{evidence} (policy always)"
    elif options.policy == "never":
        decision.why = f"{evidence} (policy never)"
    elif other_data and not options.across_datasets:
        decision.why = (
            f"trained on other data than the champion: {other_data}; not promoted across datasets "
            f"({evidence}). Give this data its own registered_model, or set promotion.across_datasets: true"
        )
    elif options.policy == "better":
        decision.promoted = diff.value > 0
        decision.why = f"{evidence} (policy better: {'higher' if decision.promoted else 'not higher'})"
    elif diff.n < options.min_test_images:
        decision.why = (
            f"{evidence}: too few to replace a champion (promotion.min_test_images is {options.min_test_images})"
        )
    elif diff.low > 0:
        decision.promoted = True
        decision.why = f"{evidence}: better at {options.confidence:.0%} confidence"
    elif diff.high < 0:
        decision.why = f"{evidence}: worse at {options.confidence:.0%} confidence"
    else:
        decision.why = f"{evidence}: not enough evidence at {options.confidence:.0%} confidence"
    if other_data and decision.promoted:
        decision.why += f"; trained on other data: {other_data}"
    return decision


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

    folder = Path(os.environ.get("ITM_LOCK_DIR") or itm_home() / "locks")
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

    if not PREFECT_API_URL.value() or not os.environ.get("PREFECT_API_URL") or os.environ.get(PRIVATE):
        yield  # a temporary or private server serves this process alone: the file lock is what serialises
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
    registered_model: str,
    log_model: Callable[[], Any],
    metric: str,
    new_scores: UnitScores,
    score_version: Callable[[str], UnitScores],
    options: PromotionOptions,
) -> tuple[Any, Promotion]:
    """Register a new version (``log_model()``), then, under :func:`promotion_lock`, re-read the
    champion, score it on the same test units (``score_version(version)``) and move ``champion`` as
    :func:`decide` says. Concurrent runs therefore decide one after the other, each against the
    champion of the moment. The decision, its interval and ``n`` are tagged on the active run and on
    the new version; the version is tagged with its training data's identity."""
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    mine = DataIdentity.of_run(run_id)
    info = log_model()
    version = str(info.registered_model_version)
    client = MlflowClient()
    with promotion_lock(registered_model):
        previous = champion_version(registered_model)
        champion, other = None, None
        if previous is not None:
            champion = score_version(str(previous.version))
            mlflow.log_metric(f"champion_test_{metric}", champion.value(metric))
            other = DataIdentity.of_run(previous.run_id).differs(mine) if previous.run_id else None
        decision = decide(
            options, metric, new_scores, version, champion, None if previous is None else str(previous.version), other
        )
        if decision.promoted:
            client.set_registered_model_alias(registered_model, CHAMPION, version)
    tags = decision.tags()
    mlflow.set_tags({**tags, "model_version": version})
    for key, value in {**tags, **prefect_context(), "promotion": decision.reason()}.items():
        client.set_model_version_tag(registered_model, version, key, value)
    print(decision.reason())
    previous_version = None if previous is None else str(previous.version)
    events.model_registered(registered_model, version, run_id, metric, decision, previous_version)
    return info, decision
