"""Progress of the long steps (training epochs, encoding passes, a benchmark's methods), told to whoever listens.

The core reports through a :class:`Tracker`; it prints nothing itself. A flow listens (every flow does,
through :func:`itm_core.ops.tracking.tracked_flow`): a line in the terminal, which Prefect also keeps in
the run's log, and a progress bar on the Prefect run's page. A library user can listen too::

    with listening(print_line):
        train_contrastive(...)

Lines read ``bilinear / ITM head: epoch 3 of 20, val_select 1.234; 12.3 s an epoch, at most 3 min 29 s
left`` ("at most" where early stopping may end sooner); ``scope`` names the part of a run they come from.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Step:
    """One long step: ``done`` of ``total`` ``unit`` since ``started``; ``note`` is its latest figure."""

    what: str
    total: int
    unit: str
    done: int = 0
    note: str = ""
    at_most: bool = False  # the total is a bound (early stopping may end sooner)
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left_s(self) -> float | None:
        """Seconds left at the pace so far; ``None`` before the first unit is done."""
        return self.elapsed / self.done * max(0, self.total - self.done) if self.done else None

    def pace(self) -> str:
        """``12.3 s an epoch`` for slow units, ``95 images a second`` for fast ones."""
        per = self.elapsed / max(1, self.done)
        if per < 1:
            return f"{1 / max(per, 1e-9):,.0f} {self.unit}s a second"
        article = "an" if self.unit[0] in "aeiou" else "a"
        return f"{duration(per)} {article} {self.unit}"

    def line(self, finished: bool = False) -> str:
        if finished:
            plural = "s" if self.done != 1 else ""
            end = f"{self.what}: {self.done:,} {self.unit}{plural} in {duration(self.elapsed)}"
            return f"{end} ({self.note})" if self.note else end
        head = f"{self.what}: {self.unit} {self.done:,} of {self.total:,}" + (f", {self.note}" if self.note else "")
        left = self.left_s()
        if left is None:
            return head
        return f"{head}; {self.pace()}, {'at most' if self.at_most else 'about'} {duration(left)} left"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 29 s``, ``1 h 05 min``; tenths under ten seconds."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


Listener = Callable[[Step, bool], None]  # (the step, whether it just finished)
_listeners: list[Listener] = []
_scopes: list[str] = []


def print_line(step: Step, finished: bool) -> None:
    """The terminal's listener: the step's line, flushed."""
    print(step.line(finished), flush=True)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """``listener(step, finished)`` hears every step reported inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Steps reported inside the block are named ``name / what``."""
    _scopes.append(name)
    try:
        yield
    finally:
        _scopes.pop()


class Tracker:
    """Reports a step's progress: after every unit when ``every_s`` is 0, else at most every ``every_s``
    seconds (and when done). Nothing is computed or printed when nobody listens."""

    def __init__(self, what: str, total: int, unit: str, every_s: float = 0.0, at_most: bool = False) -> None:
        self.step = Step(" / ".join([*_scopes, what]), total, unit, at_most=at_most)
        self.every_s, self.last = every_s, self.step.started

    def advance(self, n: int = 1, note: str = "") -> None:
        step = self.step
        step.done, step.note = step.done + n, note or step.note
        if not _listeners:
            return
        now = time.perf_counter()
        if self.every_s and now - self.last < self.every_s:
            return
        self.last = now
        for listener in list(_listeners):
            listener(step, False)

    def finish(self, note: str = "") -> None:
        """The step ended (all done or stopped early; ``note`` says how): its listeners hear it once more."""
        self.step.note = note
        if self.step.done and self.step.elapsed >= self.every_s:
            for listener in list(_listeners):
                listener(self.step, True)
