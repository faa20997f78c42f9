"""What the ``itm`` commands print: the consoles, and one line for a user's mistake."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any, NoReturn

import typer
from rich.console import Console

from itm_core.errors import UserError
from itm_core.ops.interrupts import is_interrupt

console = Console()
err = Console(stderr=True)


def debug() -> bool:
    return os.environ.get("ITM_DEBUG", "0") not in ("", "0")


def fail(exc: BaseException | str) -> NoReturn:
    """A mistake in the user's input: its one-line reason (the traceback only with --debug)."""
    if debug() and isinstance(exc, BaseException):
        import traceback

        traceback.print_exception(exc)
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)  # one line, however long
    raise typer.Exit(2)


def unreachable_server(exc: BaseException) -> str | None:
    """When ``exc`` (or its cause) is a connection to the tracking server that failed after MLflow's
    retries, the one-line reason naming the server; else ``None``."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    seen, current = 0, exc
    found: BaseException | None = exc
    while found is not None and seen < 10:
        current = found
        text = f"{type(current).__name__}: {current}"
        if any(
            m in text
            for m in (
                "Max retries exceeded",
                "Connection refused",
                "ConnectionError",
                "Failed to establish a new connection",
            )
        ):
            return (
                f"the MLflow tracking server {uri} did not answer (after MLflow's retries; "
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES sets how many). "
                "Start it (`itm up`) or point MLFLOW_TRACKING_URI elsewhere; nothing was promoted"
            )
        found, seen = current.__cause__ or current.__context__, seen + 1
    return None


def flows_console() -> None:
    """Before a flow runs: Prefect's console keeps progress but not the traceback of an input error."""
    if not debug():
        from itm_core.ops.console import hide_input_tracebacks

        hide_input_tracebacks(
            (UserError,),
            also=lambda e: (
                unreachable_server(e) is not None if isinstance(e, BaseException) else "Max retries exceeded" in e
            ),
        )


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (``timeout``, a scheduler, a container stop) as Ctrl-C; a second one is ignored while
    the first is handled."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def flow_session(what: str) -> Iterator[None]:
    """While a command runs flows: a Prefect server of its own when none is configured (see
    ``itm_core.ops.local_server``), and Ctrl-C or SIGTERM ending it in seconds with one line. The
    flows mark their MLflow runs KILLED and Prefect records the flow run as crashed by the interrupt
    before the server stops; finished runs, the embedding cache and checkpoints stay."""
    from itm_core.ops.local_server import private_prefect_server

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with private_prefect_server():
            try:
                yield
            except BaseException as exc:
                if not is_interrupt(exc):
                    raise
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                err.print(
                    f"stopped: {what} was interrupted. Its open MLflow runs are marked KILLED and its Prefect "
                    "flow run crashed by the interrupt; the runs it finished, the embedding cache and checkpoints "
                    "are kept, so running it again continues where they allow",
                    highlight=False,
                    soft_wrap=True,
                )
                raise typer.Exit(130) from None
    except UserError as exc:
        fail(exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
