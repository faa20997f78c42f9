"""When a Prefect task is tried again: failures that may pass, never bad input."""

from __future__ import annotations

from typing import Any


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry failures that may pass (a server, a file system, a download),
    never bad input (unknown model, invalid value, missing file), which would fail the same way again."""
    from itm_core.components import ContractError
    from itm_core.contract.registry import RegistryError

    try:
        state.result()
    except (LookupError, ValueError, TypeError, FileNotFoundError, ContractError, RegistryError, ImportError):
        return False
    except Exception:
        return True
    return False
