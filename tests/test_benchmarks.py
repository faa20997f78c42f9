"""`make bench --quick`: every benchmark runs end to end on tiny inputs and reports its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_every_benchmark_runs_and_is_reported(tmp_path):
    env = {**os.environ, "ITM_AUTO_COMPILE_ITEMS": "100000"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"encoding", "cache", "kill", "retrieval", "training", "overhead", "scaling", "dask", "search", "serving"}
    for name, entry in results.items():
        assert entry["rows"], name
        for row in entry["rows"]:
            assert row["value"] is not None and row["value"] >= 0, (name, row)
    kill = results["kill"]["rows"][0]
    assert kill["what"].startswith("kill -9 at ") and "/128 images committed" in kill["what"]
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| retrieval ranks, 500 images x 2500 captions, s |" in report and "cores" in report
