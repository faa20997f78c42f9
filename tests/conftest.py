"""Test set-up: everything offline and inside temporary folders; one Prefect test server per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="itm-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ITM_HOME"] = str(_SESSION_HOME / "itm")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_HOME / 'mlflow.db'}"
os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # short test runs still get system metrics
os.environ.pop("ITM_PLUGINS", None)
os.environ.pop("ITM_DISABLE_PLUGINS", None)

# Prefect binds its console log handler to sys.stderr when its logging is set up, on first import.
# Set it up now, so that it is never bound to a CliRunner's temporary stream that a test then closes.
import prefect.main  # noqa: E402,F401
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API server for the whole session (started once: it is slow on 2 cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh MLflow tracking store (SQLite plus an artifact folder) for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))


@pytest.fixture
def fresh_plugins():
    """Reload plugins from the environment before and after a test that changes ITM_PLUGINS and friends."""
    from itm_core.contract.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture(scope="session")
def tiny_shapes_options() -> dict:
    return {"n_train": 48, "n_val": 16, "n_test": 16, "seed": 3, "image_size": 64}


@pytest.fixture(scope="session")
def tiny_shapes(tiny_shapes_options):
    from itm_core import create

    return create("dataset", "shapes", **tiny_shapes_options).load()


import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the tiny-model builders in tests/tiny_models.py


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_experiment():
    """``mlflow.set_experiment`` exports ``MLFLOW_EXPERIMENT_ID`` for child processes; a flow run in
    this process must not hand its store's experiment id to another test's subprocesses."""
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier (``make test-fast``, ``-m unit``): every test that is neither ``e2e`` nor ``slow``
    and starts no Prefect server. A test that starts a subprocess, runs a flow or trains for more than a
    few seconds is marked ``slow`` (or ``e2e``) where it is written."""
    for item in items:
        heavy = item.get_closest_marker("e2e") or item.get_closest_marker("slow")
        if not heavy and "prefect_server" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.unit)
