"""A Prefect server of one command's own, for flows run in the terminal while no stack runs.

Prefect would start a temporary server in the command's process group, where a Ctrl-C or the
SIGTERM of ``timeout``, a scheduler or a container stop reaches it at the same moment as the flow:
the server is gone before the flow can record how it ended (the flow run stays "Running", and each
of its log calls prints a connection traceback). This one runs in a session of its own, on the
same database (``PREFECT_HOME``), and is stopped by the command after the flow has finished or
recorded its interruption.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from itm_core.errors import StackError

PRIVATE = "ITM_PRIVATE_PREFECT"  # set while a command's own server is in use


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _refresh_prefect_settings() -> None:
    """Prefect reads its settings from the environment when it is imported; when it already is,
    have it read them again."""
    context = sys.modules.get("prefect.context")
    if context is not None:
        context.refresh_global_settings_context()


def _api_configured() -> bool:
    """A Prefect API is set: in the environment, or in the settings of a Prefect already imported
    (a test harness, a profile)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    settings = sys.modules.get("prefect.settings.context")
    return settings is not None and bool(settings.get_current_settings().api.url)


def _drain_prefect() -> None:
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=10)


@contextlib.contextmanager
def private_prefect_server() -> Iterator[str | None]:
    """Start the server and point ``PREFECT_API_URL`` at it for the duration; nothing when a
    Prefect API is configured already. Yields the API URL or ``None``."""
    if _api_configured():
        yield None
        return
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    port = _free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent)]
    argv += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", "error", "--lifespan", "on"]
    server = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
        while not _healthy(url):
            if server.poll() is not None:
                reason = (server.stderr.read() if server.stderr else b"").decode(errors="replace")[-2000:]
                raise StackError(f"the Prefect server for this command exited while starting: {reason}")
            if time.monotonic() > deadline:
                raise StackError(
                    "the Prefect server for this command did not answer; raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or start the stack (`itm up`)"
                )
            time.sleep(0.2)
        os.environ["PREFECT_API_URL"], os.environ[PRIVATE] = url, "1"
        _refresh_prefect_settings()
        yield url
    finally:
        _drain_prefect()  # what Prefect still has to send (logs, events) reaches the server first
        os.environ.pop(PRIVATE, None)
        if os.environ.get("PREFECT_API_URL") == url:
            del os.environ["PREFECT_API_URL"]
            _refresh_prefect_settings()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
