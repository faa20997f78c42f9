"""The example plugin package, installed like a third-party plugin, used by name in real flows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from itm_core.config import (
    ComponentParams,
    ContrastiveTraining,
    DatasetParams,
    EvaluateParams,
    GenerateParams,
    MatcherRef,
    RetrainParams,
)
from itm_core.contract.plugins import reset_plugin_manager

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "itm-plugin-example"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # pip installs the example


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """``pip install`` the example (offline) into a folder put on the path: its real entry points, no core change."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    reset_plugin_manager()
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("itm_plugin_example")]:
        del sys.modules[name]
    reset_plugin_manager()


def test_listed_by_itm_plugins(installed_example):
    from cli.main import app

    result = CliRunner().invoke(app, ["plugins", "--json"])
    example = {p["name"]: p for p in json.loads(result.stdout)}["example"]
    assert example["version"] == "0.1.0" and example["builtin"] is False and "error" not in example
    assert {c["kind"] for c in example["components"]} == {
        "encoder",
        "similarity",
        "fusion",
        "generator",
        "metric",
        "dataset",
        "explainer",
    }
    assert set(example["hooks"]) == {
        f"register_{k}"
        for k in ("encoders", "similarities", "fusions", "generators", "metrics", "datasets", "explainers")
    }


def test_its_own_tests_pass(installed_example, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(installed_example), os.environ.get("PYTHONPATH", "")]),
        "ITM_HOME": str(tmp_path),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout


def test_flows_use_its_components_by_name(installed_example, prefect_server, mlflow_store):
    from flows.evaluate import evaluate
    from flows.generate import generate
    from flows.retrain import retrain

    dataset = DatasetParams(name="colour-swatches", options={"per_colour": 5})  # one test swatch per colour: no ties
    image = ComponentParams(name="colour-names", options={"modality": "image"})
    text = ComponentParams(name="colour-names", options={"modality": "text"})

    board = evaluate(
        EvaluateParams(
            dataset=dataset, matchers=[MatcherRef(image_encoder=image, text_encoder=text, similarity="neg-euclidean")]
        )
    )
    assert board[0]["i2t_r1"] == 1.0

    rows = generate(
        GenerateParams(
            dataset=dataset, generator="colour-namer", num_images=8, metrics=[ComponentParams(name="exact-match")]
        )
    )["generations"]
    assert len(rows) == 8
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("itm-generate").experiment_id])[0]
    assert run.data.metrics["exact_match"] == 1.0, (rows, run.data.metrics)

    trained = retrain(
        RetrainParams(
            dataset=dataset,
            image_encoder=image,
            text_encoder=text,
            training=ContrastiveTraining(epochs=3, batch_size=8, hidden_dim=0, embed_dim=8),
        )
    )
    assert trained["model_version"] == "1" and trained["promoted"]

    with pytest.raises(ValueError, match="metric 'retrieval' has task 'retrieval'"):
        generate(
            GenerateParams(
                dataset=dataset, generator="colour-namer", num_images=2, metrics=[ComponentParams(name="retrieval")]
            )
        )
