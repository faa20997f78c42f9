"""Ctrl-C and SIGTERM, whatever exception they end up as: a ``KeyboardInterrupt``, Prefect's
``TerminationSignal`` (Prefect turns SIGTERM into it while a flow runs), or an error raised by a
library that was interrupted in the middle of its own work, with one of those as its cause."""

from __future__ import annotations

STOP_SIGNALS = ("KeyboardInterrupt", "TerminationSignal")


def is_interrupt(exc: BaseException | None) -> bool:
    """``exc``, or an exception it was raised from or while handling, is a Ctrl-C or a SIGTERM."""
    for _ in range(20):
        if exc is None:
            return False
        if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ in STOP_SIGNALS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
