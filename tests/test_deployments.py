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
    assert found == {
        name: "default"
        for name in (
            "retrain",
            "evaluate",
            "generate",
            "fusion-benchmark",
            "generation-benchmark",
            "explain",
            "explain-benchmark",
            "index",
            "search",
            "watch-data",
        )
    }
    from flows import FLOWS

    assert set(found) == set(FLOWS)


def test_parameter_forms_have_defaults_and_descriptions():
    from flows import get_flow

    fn, _ = get_flow("retrain")
    schema = parameter_schema(fn).model_dump_for_openapi()
    defs = schema["definitions"]
    training = defs["ContrastiveTraining"]["properties"]
    assert training["epochs"]["default"] == 40 and "Maximum epochs" in training["epochs"]["description"]
    assert set(defs["RetrainParams"]["properties"]) >= {
        "dataset",
        "image_encoder",
        "text_encoder",
        "training",
        "promote_metric",
    }
    assert defs["DatasetParams"]["properties"]["on_bad_image"]["enum"] == ["fail", "skip"]


def test_forms_offer_registered_components_by_kind():
    """The served deployments' schemas list the registered plugins of the right kind as choices."""
    from itm_core.ops.stack import build_deployments

    schemas = [d._parameter_openapi_schema.model_dump() for d in build_deployments()]
    assert len(schemas) == 10
    defs = {}
    for schema in schemas:
        defs.update(schema["definitions"])

    def choices(model: str, field: str) -> list[str]:
        prop = defs[model]["properties"][field]
        prop = prop.get("items", prop)
        ref = next((p["$ref"] for p in [prop, *prop.get("anyOf", [])] if "$ref" in p), None)
        return defs[ref.rsplit("/", 1)[-1]]["properties"]["name"]["enum"] if ref else prop["enum"]

    assert "efficientnet-lite0" in choices("RetrainParams", "image_encoder") and "minilm" not in choices(
        "RetrainParams", "image_encoder"
    )
    assert "minilm" in choices("RetrainParams", "text_encoder") and "clip" in choices("RetrainParams", "text_encoder")
    assert {"bleu", "r_precision", "fd"} <= set(choices("GenerateParams", "metrics"))
    assert "trained-captioner" in choices("GenerateParams", "generator")
    assert {"shapes", "scenes", "manifest"} <= set(choices("RetrainParams", "dataset"))
    assert (
        {"occlusion", "lime", "shap", "grad-cam"}
        <= set(choices("ExplainParams", "explainers"))
        == set(choices("ExplainBenchmarkParams", "explainers"))
    )
    assert {"mean", "bilinear"} <= set(choices("FusionBenchmarkParams", "fusions"))
    assert {"cvae", "gan", "vqvae", "diffusion"} == set(choices("GenerationBenchmarkParams", "models"))
    assert "minilm" in choices("GenerationBenchmarkParams", "text_encoder")
    assert {"trained-captioner", "retrieval-captioner"} <= set(
        choices("GenerationBenchmarkParams", "captioners")
    ) and "trained-text-to-image" not in choices("GenerationBenchmarkParams", "captioners")
    assert "cosine" in choices("MatcherRef", "similarity")
