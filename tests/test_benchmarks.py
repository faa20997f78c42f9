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
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {
        "encoding",
        "cache",
        "kill",
        "retrieval",
        "training",
        "generator",
        "overhead",
        "scaling",
        "dask",
        "search",
        "session",
        "serving",
        "condition",
    }
    for name, entry in results.items():
        assert entry["rows"], name
        for row in entry["rows"]:
            assert row["value"] is not None and row["value"] >= 0, (name, row)
    kill = results["kill"]["rows"][0]
    assert kill["what"].startswith("kill -9 at ") and "/128 images committed" in kill["what"]
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| retrieval ranks, 500 images x 2500 captions, s |" in report and "cores" in report


def test_coco_projection_uses_runs_of_the_same_settings_and_bounds_with_the_others():
    from benchmarks.run import coco_projection

    results = {
        "scaling": {"rows": [{"images": 3000, "rss_gib": 1.0}, {"images": 9000, "rss_gib": 1.5}]},
        "flickr": {"rows": [{"images": 31000, "rss_gib": 4.0, "settings": "int8"}]},
    }
    text = " ".join(coco_projection(results))
    slope = 0.5 / 6000
    assert f"**{1.5 + slope * (123287 - 9000):.1f} GiB**" in text  # the default runs' line, not through the int8 run
    assert f"upper bound of **{1.5 + 2.5 / 22000 * (123287 - 9000):.1f} GiB**" in text and "(int8)" in text
    results["flickr"]["rows"][0].pop("settings")  # all default: the line through the two largest
    text = " ".join(coco_projection(results))
    assert f"**{4.0 + 2.5 / 22000 * (123287 - 31000):.1f} GiB**" in text and "upper bound" not in text
    assert "run itself" not in text
    results["coco"] = {"rows": [{"images": 123287, "rss_gib": 6.5, "settings": "int8"}, {"images": 1}]}
    text = " ".join(coco_projection(results))  # the measured run is named, not used to project
    assert "The COCO-size run itself (section coco) peaked at **6.50 GiB**." in text
    assert f"**{4.0 + 2.5 / 22000 * (123287 - 31000):.1f} GiB**" in text
