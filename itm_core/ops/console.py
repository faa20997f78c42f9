"""What reaches the user's terminal: progress, results and where to look; not the libraries' chatter.

``quiet_libraries`` turns off what a user cannot act on (weight-loading progress bars, transformers'
and diffusers' advisories, MLflow's INFO lines). ``hide_input_tracebacks`` keeps Prefect's console
from printing a traceback for a mistake in the user's input: the command prints the one-line reason
instead, and the traceback stays in the Prefect API's log of the run. ``itm --debug`` leaves everything
as the libraries set it.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

from itm_core.ops.interrupts import is_interrupt


def quiet_libraries() -> None:
    """Set before the libraries are imported (the environment variables) and again after (the loggers)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*`torch_dtype` is deprecated", category=FutureWarning)


class _InputErrorFilter(logging.Filter):
    """On Prefect's console: drop the records of a run that failed on a user-input error (their
    traceback, and the 'Failed(...)' state lines that repeat the reason)."""

    def __init__(self, errors: tuple[type[BaseException], ...], also: Any = None) -> None:
        super().__init__()
        self.errors = errors
        self.also = also  # a predicate on an exception or a message: more errors the command reports in one line
        self.names = {cls.__name__ for base in errors for cls in _subclasses(base)}
        self.failed = re.compile(r"encountered an exception:? (\w+)")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if is_interrupt(exc):
                return False
            return not (isinstance(exc, self.errors) or (self.also is not None and self.also(exc)))
        message = record.getMessage()
        stopped = "interrupt signal" in message or "termination signal" in message
        if stopped and ("Crash detected" in message or "Crashed" in message):
            return False  # a Ctrl-C or SIGTERM: the command says what was stopped, in one line
        match = self.failed.search(message)
        if match and (match.group(1) in self.names or (self.also is not None and self.also(message))):
            return False
        if str(record.msg).startswith("Starting temporary server"):
            record.msg, record.args = str(record.msg).splitlines()[0], ()
        return True


def _subclasses(cls: type) -> set[type]:
    out: set[type] = {cls}
    subclass: type
    for subclass in cls.__subclasses__():
        out |= _subclasses(subclass)
    return out


def hide_input_tracebacks(errors: tuple[type[BaseException], ...], also: Any = None) -> None:
    """Attach the filter to Prefect's console handlers (set up when Prefect is imported)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [
        h for name in ("prefect", "") for h in logging.getLogger(name).handlers if isinstance(h, PrefectConsoleHandler)
    ]
    for handler in handlers:
        if not any(isinstance(f, _InputErrorFilter) for f in handler.filters):
            handler.addFilter(_InputErrorFilter(errors, also))
