"""A clean stop: SIGTERM, sent as ``timeout`` sends it (to the command's whole process group), in the
middle of a fusion's training and of an encoding. The command ends with one line and no traceback,
its open MLflow runs are KILLED, the runs it finished stay FINISHED, Prefect records the flow run as
crashed by the signal, and running it again works."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ITM = str(Path(sys.executable).parent / "itm")


def start(home: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API", "PREFECT_HOME"))}
    env["ITM_HOME"] = str(home)
    return subprocess.Popen(
        [ITM, *args],
        env=env,
        cwd=home.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as under `timeout`
    )


def runs(home: Path) -> list[tuple[str, str, str | None]]:
    """(run name, status, parent run id) of every MLflow run in the home's store."""
    db = home / "mlflow" / "mlflow.db"
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute(
                "select r.name, r.status, (select value from tags t where t.run_uuid = r.run_uuid and "
                "t.key = 'mlflow.parentRunId') from runs r"
            ).fetchall()
    except sqlite3.OperationalError:  # the tables are being created
        return []
    return [(str(n), str(s), p) for n, s, p in rows]


def stop_when(process: subprocess.Popen, home: Path, ready, limit: float = 600) -> tuple[str, str]:
    """Send SIGTERM to the command's process group once ``ready(runs)`` holds; its output."""
    deadline = time.monotonic() + limit
    while not ready(runs(home)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the moment to stop never came"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    return out, err


def flow_run_states(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "prefect" / "prefect.db") as con:
        rows = con.execute("select s.type, s.message from flow_run f join flow_run_state s on s.id = f.state_id")
        return [(str(a), str(b)) for a, b in rows]


def assert_stopped_cleanly(process: subprocess.Popen, out: str, err: str, flow: str) -> None:
    assert process.returncode == 130, out[-2000:] + err[-3000:]
    assert f"stopped: the {flow} flow was interrupted" in err
    assert "Traceback" not in out + err and "Error logging to API" not in out + err, err[-3000:]


def test_sigterm_in_the_middle_of_a_fusion(tmp_path):
    home = tmp_path / "home"
    tiny = {"n_train": 200, "n_val": 40, "n_test": 40, "seed": 3, "image_size": 64}
    process = start(
        home,
        "run",
        "fusion-benchmark",
        "--set",
        f"dataset.options={json.dumps(tiny)}",
        "--set",
        "image_encoder.name=color-histogram",
        "--set",
        "text_encoder.name=tfidf",
        "--set",
        "fusions=[mean, bilinear]",
    )
    # a fusion finished and the next one training
    out, err = stop_when(
        process,
        home,
        lambda found: (
            any(p and s == "FINISHED" for _, s, p in found) and any(p and s == "RUNNING" for _, s, p in found)
        ),
    )
    assert_stopped_cleanly(process, out, err, "fusion-benchmark")
    found = runs(home)
    assert [s for _, s, p in found if p is None] == ["KILLED"], found  # the benchmark's own run
    nested = {n: s for n, s, p in found if p is not None}
    assert "FINISHED" in nested.values() and "KILLED" in nested.values() and "RUNNING" not in nested.values()
    ((state, message),) = flow_run_states(home)
    assert state == "CRASHED" and "signal" in message


def test_sigterm_during_an_encoding_and_a_rerun(tmp_path):
    home = tmp_path / "home"
    args = [
        "run",
        "evaluate",
        "--set",
        'dataset.options={"n_train": 8, "n_val": 8, "n_test": 600, "seed": 4, "image_size": 64}',
        "--set",
        "matchers=[{image_encoder: {name: efficientnet-lite0}, text_encoder: {name: minilm}, untrained_heads: true}]",
    ]
    process = start(home, *args)
    out, err = stop_when(process, home, lambda found: any(p and s == "RUNNING" for _, s, p in found))
    assert_stopped_cleanly(process, out, err, "evaluate")
    assert {s for _, s, _ in runs(home)} == {"KILLED"}
    again = start(home, *args)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert sorted(s for _, s, p in runs(home) if p is None) == ["FINISHED", "KILLED"]
