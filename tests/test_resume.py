"""A retrain killed with -9 mid-training: its MLflow run does not stay RUNNING, and `resume: true`
continues it from the last epoch's checkpoint to the result of a run never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent


def test_kill_then_resume_matches_an_uninterrupted_run(prefect_server, mlflow_store, tmp_path, tiny_shapes_options):
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL

    from itm_core.ops.checkpoints import local_path

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_store,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "ITM_HOME": str(tmp_path / "itm"),
    }
    params = {
        "dataset": {"options": tiny_shapes_options},
        "image_encoder": {"name": "color-histogram"},
        "text_encoder": {"name": "tfidf", "options": {"max_features": 256}},
        "training": {
            "epochs": 60,
            "patience": 60,
            "batch_size": 8,
            "hidden_dim": 256,
            "dropout": 0.2,
            "checkpoint_every": 1,
        },
    }

    def retrain(extra: dict, name: str) -> subprocess.Popen:
        file = tmp_path / f"{name}.json"
        file.write_text(json.dumps({**params, "training": {**params["training"], **extra}}))
        return subprocess.Popen(
            [str(BIN / "itm"), "run", "retrain", "--params", str(file)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    # run 1: killed with -9 once a few epochs are checkpointed
    first = retrain({}, "first")
    deadline = time.monotonic() + 300
    checkpoint = None
    while checkpoint is None or torch.load(checkpoint, weights_only=True)["epoch"] < 5:
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        found = (
            list((tmp_path / "itm" / "checkpoints").glob("*.pt")) if (tmp_path / "itm" / "checkpoints").is_dir() else []
        )
        checkpoint = found[0] if found else None
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(30)
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    client = MlflowClient()
    (killed_run,) = client.search_runs([client.get_experiment_by_name("itm-retrain").experiment_id])
    assert killed_run.info.status == "RUNNING" and killed_at < 60

    # run 2: resume; the killed run is closed as FAILED, then reopened and finished from the next epoch
    second = retrain({"resume": True}, "second")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    resumed = json.loads(out)
    assert resumed["run_id"] == killed_run.info.run_id
    assert "resuming from the checkpoint of epoch" in err and "marked MLflow run" in err
    run = client.get_run(resumed["run_id"])
    assert run.info.status == "FINISHED" and int(run.data.tags["itm.resumed_from_epoch"]) >= killed_at
    assert not local_path(run.data.tags["itm.resume_key"]).exists()  # cleared once finished

    # run 3: the same parameters, never interrupted (epochs in a fresh process, same data and cache)
    third = retrain({}, "third")
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err[-3000:]
    whole = json.loads(out)
    assert resumed["epochs"] == whole["epochs"] and resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["test"] == pytest.approx(whole["test"], abs=1e-6)

    # an epoch logged just before the kill and again after the resume has one value per step
    def curve(run_id: str) -> list[float]:
        steps = {m.step: m.value for m in client.get_metric_history(run_id, "val_rsum")}
        return [v for _, v in sorted(steps.items())]

    assert curve(resumed["run_id"]) == pytest.approx(curve(whole["run_id"]), abs=1e-6)
