"""One store: where runs, models and flow runs are kept, whether the local stack runs or not.

The rule: every command of one workbench home (``$ITM_HOME``, ``./.itm``) uses the same MLflow
store and registry and the same Prefect database.

- While ``itm up`` runs there, commands go through its servers (``use_running_stack``).
- Otherwise they open the very files those servers serve: the SQLite store
  ``$ITM_HOME/mlflow/mlflow.db`` with artifacts in ``$ITM_HOME/mlflow/artifacts``, and Prefect's
  database in ``$ITM_HOME/prefect`` (through Prefect's ephemeral server).
- ``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL`` or ``PREFECT_HOME``, when set, win.

So ``make demo`` then ``make up`` shows the demo's runs and champion, and a run made while the stack
is down is there when it comes up.
"""

from __future__ import annotations

import os
from pathlib import Path

from itm_core.errors import StackError
from itm_core.home import itm_home


def mlflow_folder(home: Path | None = None) -> Path:
    return (home or itm_home()) / "mlflow"


def tracking_uri(home: Path | None = None) -> str:
    """The home's MLflow store as a SQLite URI (what the stack's MLflow server serves)."""
    return f"sqlite:///{mlflow_folder(home) / 'mlflow.db'}"


def artifact_root(home: Path | None = None) -> Path:
    return mlflow_folder(home) / "artifacts"


def prefect_home(home: Path | None = None) -> Path:
    return (home or itm_home()) / "prefect"


def use_home_store(home: Path | None = None) -> dict[str, str]:
    """Point this process at the home's MLflow store and Prefect database, for what the environment
    leaves unset. Call it before Prefect is imported (Prefect reads ``PREFECT_HOME`` then). Returns
    what it set."""
    chosen: dict[str, str] = {}
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        artifact_root(home).mkdir(parents=True, exist_ok=True)
        chosen["MLFLOW_TRACKING_URI"] = tracking_uri(home)
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        chosen["PREFECT_HOME"] = str(prefect_home(home))
    os.environ.update(chosen)
    return chosen


def experiment_location(name: str, uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: in the home's artifact folder when ``uri`` is the
    home's SQLite store (MLflow would pick ``./mlruns`` of the working directory), else where the
    tracking server decides."""
    if uri != tracking_uri():
        return None
    return (artifact_root() / name).as_uri()


def check_reachable_artifacts(name: str, location: str, uri: str) -> None:
    """An experiment created through an MLflow server that proxies artifacts (``mlflow-artifacts:``)
    cannot take artifacts from a process that opens the store directly."""
    if location.startswith("mlflow-artifacts:") and not uri.startswith(("http://", "https://")):
        raise StackError(
            f"MLflow experiment {name!r} keeps its artifacts behind the tracking server that created it "
            f"({location}); start that server (`itm up`) or set MLFLOW_TRACKING_URI to it"
        )
