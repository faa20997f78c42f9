"""prefect.yaml and the flows' parameter schemas (what the Prefect UI renders as forms)."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[1]


def test_each_flow_has_a_default_deployment_that_loads():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = {}
    for d in doc["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        found[flow.name] = d["name"]
    assert found == {"retrain": "default", "evaluate": "default", "generate": "default", "fusion-benchmark": "default"}


def test_parameter_forms_have_defaults_and_descriptions():
    from flows import get_flow

    fn, _ = get_flow("retrain")
    schema = parameter_schema(fn).model_dump_for_openapi()
    defs = schema["definitions"]
    training = defs["TrainingParams"]["properties"]
    assert training["epochs"]["default"] == 40 and "Maximum epochs" in training["epochs"]["description"]
    assert set(defs["RetrainParams"]["properties"]) >= {"dataset", "image_encoder", "text_encoder", "training", "promote_metric"}
    assert defs["DatasetParams"]["properties"]["on_bad_image"]["enum"] == ["fail", "skip"]
