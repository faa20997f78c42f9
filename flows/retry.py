"""When a Prefect task is tried again: failures that may pass, never bad input."""

from __future__ import annotations

from typing import Any

from itm_core.errors import UserError


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry failures that may pass (a server, a file system, a download),
    never a user error (an unknown model, an invalid value, a missing file) or a missing library,
    which would fail the same way again."""
    try:
        state.result()
    except (UserError, ImportError):
        return False
    except Exception:
        return True
    return False
