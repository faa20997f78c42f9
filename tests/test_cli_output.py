"""What `itm` prints in a terminal: progress and results, no library chatter; an input error in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ITM = str(Path(sys.executable).parent / "itm")
NOISE = (
    "Traceback",
    "WARNING",
    "Warning",
    "Loading weights",
    "CloudPickle",
    "INFO mlflow",
    "it/s]",
    "torch_dtype",
    "See https://",
)


def _env(tmp_path: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ITM_HOME": str(tmp_path / "itm"),
    }


def _itm(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ITM, *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=500,
    )


def test_retrain_prints_progress_and_results_only(prefect_server, tmp_path, tiny_shapes_options):
    params = tmp_path / "small.json"
    params.write_text(
        json.dumps({"dataset": {"options": tiny_shapes_options}, "training": {"epochs": 2, "batch_size": 16}})
    )
    run = _itm(["run", "retrain", "--params", str(params)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    noise = [line for line in run.stderr.splitlines() if any(n in line for n in NOISE)]
    assert noise == [], noise
    assert "contrastive heads: epoch 1 of 2, loss" in run.stderr and "promoted v1" in run.stderr  # progress, decision
    result = json.loads(run.stdout)
    assert result["model_version"] == "1" and result["test"]["rsum"] > 0


def test_input_error_is_one_line_and_debug_shows_the_traceback(prefect_server, tmp_path):
    params = tmp_path / "missing.json"
    params.write_text(json.dumps({"dataset": {"name": "manifest", "options": {"path": str(tmp_path / "no-such.csv")}}}))
    run = _itm(["run", "retrain", "--params", str(params)], tmp_path)
    assert run.returncode == 2
    reason = f"error: manifest '{tmp_path / 'no-such.csv'}' does not exist"
    assert reason in run.stderr
    assert "Traceback" not in run.stderr and run.stderr.count("does not exist") == 1, run.stderr
    debug = _itm(["--debug", "run", "retrain", "--params", str(params)], tmp_path)
    assert debug.returncode == 2 and reason in debug.stderr and "Traceback" in debug.stderr


def test_tracking_server_away_is_one_line_naming_it(prefect_server, tmp_path):
    """MLflow's tracking server is not there (retries exhausted): one line naming the server, exit 2."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    env = {
        **_env(tmp_path),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    }
    params = tmp_path / "eval.json"
    params.write_text(
        json.dumps(
            {
                "matchers": [
                    {
                        "image_encoder": {"name": "color-histogram"},
                        "text_encoder": {"name": "bow"},
                        "untrained_heads": True,
                    }
                ],
                "dataset": {"options": {"n_train": 8, "n_val": 4, "n_test": 4, "image_size": 32}},
            }
        )
    )
    run = subprocess.run(
        [ITM, "run", "evaluate", "--params", str(params)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert f"error: the MLflow tracking server http://127.0.0.1:{port} did not answer" in run.stderr
    assert "Traceback" not in run.stderr
