"""Where a flow run's progress shows: a line in the terminal (which Prefect keeps in the run's log, as it
keeps everything a flow prints) and a progress bar per long step on the Prefect run's page.

Every flow listens through :func:`showing_progress` (see :func:`itm_core.ops.tracking.tracked_flow`);
the core reports with :class:`itm_core.progress.Tracker`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from typing import Any, cast
from uuid import UUID

from itm_core.progress import Step, listening, print_line

UPDATE_EVERY_S = 2.0  # a bar's value is sent to the Prefect API at most this often (and when its step ends)
log = logging.getLogger(__name__)


def artifact_key(what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from a step's name."""
    return re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-")[:100] or "progress"


class PrefectBars:
    """A progress artifact per step, created on the step's first report and updated as it goes. The API
    unreachable (a server going down) costs the bars, never the run."""

    def __init__(self) -> None:
        self.bars: dict[int, tuple[Step, UUID, float]] = {}
        self.broken = False

    def __call__(self, step: Step, finished: bool) -> None:
        if self.broken:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        value = 100.0 if finished else min(100.0, 100.0 * step.done / max(1, step.total))
        try:
            known = self.bars.get(id(step))
            if known is None or known[0] is not step:
                description = f"{step.what}: {step.unit}s of {step.total:,}" + (
                    " (early stopping may end sooner)" if step.at_most else ""
                )
                # called from a flow's (synchronous) code, it returns the artifact's id, not a coroutine
                made = cast(UUID, create_progress_artifact(value, key=artifact_key(step.what), description=description))
                self.bars[id(step)] = (step, made, time.perf_counter())
            else:
                _, bar, sent = known
                if finished or time.perf_counter() - sent >= UPDATE_EVERY_S:
                    update_progress_artifact(bar, value)
                    self.bars[id(step)] = (step, bar, time.perf_counter())
        except Exception as error:
            self.broken = True
            log.warning("progress bars stop: the Prefect API did not take them (%s)", error)
        if finished:
            self.bars.pop(id(step), None)


@contextlib.contextmanager
def showing_progress() -> Iterator[Any]:
    """Progress lines in the terminal and bars on the Prefect run's page for every step reported inside."""
    with listening(print_line), listening(PrefectBars()):
        yield
