"""The fusion-benchmark flow end to end on tiny data: nested runs, a leaderboard, a chart, and tasks
that follow what the dataset has."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from itm_core.config import ContrastiveTraining, DatasetParams, FusionBenchmarkParams, HeadTraining
from itm_core.errors import OptionsError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
FAST = dict(
    contrastive=ContrastiveTraining(epochs=3, batch_size=16),
    itm=HeadTraining(epochs=2, batch_size=16),
    vqa=HeadTraining(epochs=2, batch_size=32),
    reader=HeadTraining(epochs=2, batch_size=16),
    dim=16,
    hard_pool=4,
    rerank_k=4,
)


def _runs(experiment: str):
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parent, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_benchmark_on_shapes(prefect_server, mlflow_store, tiny_shapes_options):
    from flows.fusion_benchmark import fusion_benchmark

    params = FusionBenchmarkParams(
        dataset=DatasetParams(options=tiny_shapes_options),
        fusions=["mean", "cross-attention"],
        fusion_options={"cross-attention": {"layers": 1, "heads": 2}},
        **FAST,
    )
    board = fusion_benchmark(params)
    assert [r["method"] for r in board] == ["similarity (contrastive)", "mean + ITM", "cross-attention + ITM"]
    for row in board[1:]:
        for key in (
            "vqa_accuracy",
            "itm_accuracy",
            "itm_auc",
            "probe_accuracy",
            "i2t_r1_contrastive",
            "i2t_r1_itm",
            "i2t_r1_combined",
            "t2i_r1_contrastive",
            "t2i_r1_itm",
            "t2i_r1_combined",
        ):
            assert 0.0 <= row[key] <= 1.0
        # the same contrastive matcher for every row; k and the weight were chosen on validation
        assert row["i2t_r1_contrastive"] == board[0]["i2t_r1_contrastive"] and row["rerank_t2i_k"] in (0, 2, 4)
        assert row["parameters"] > 0 and row["train_seconds"] > 0
    assert (
        pd.isna(board[0]["vqa_accuracy"])
        and pd.isna(board[0]["i2t_r1_combined"])
        and 0.0 <= board[0]["probe_accuracy"] <= 1.0
    )

    client, parent, children = _runs("itm-fusion-benchmark")
    assert len(parent) == 1 and sorted(c.info.run_name for c in children) == ["cross-attention", "mean"]
    child = next(c for c in children if c.info.run_name == "mean")
    assert {
        "vqa_accuracy_colour",
        "vqa_accuracy_count",
        "probe_accuracy_position",
        "reranked_i2t_r1",
        "itm_only_t2i_r1",
        "rerank_i2t_weight",
        "itm_auc",
    } <= set(child.data.metrics)
    for key in ("itm_val_itm_auc", "itm_val_rerank_r1", "itm_val_select"):
        assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [1, 2]
    attention = next(c for c in children if c.info.run_name == "cross-attention")
    # text_reader auto: the mean fusion also gets the shared reader's vector; cross-attention reads tokens itself
    assert child.data.metrics["text_reader_tokens"] == 1.0 and attention.data.metrics["text_reader_tokens"] == 0.0
    # the shared reader was trained once, before the fusions, with the ITM head of reader_fusion
    assert {"text_reader_best_epoch", "text_reader_seconds"} <= set(parent[0].data.metrics)
    history = client.get_metric_history(parent[0].info.run_id, "text_reader_val_select")
    assert [m.step for m in history] == [1, 2]
    assert "attention_maps.png" in {a.path for a in client.list_artifacts(attention.info.run_id)}
    assert "attention_maps.png" not in {a.path for a in client.list_artifacts(child.info.run_id)}
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"fusion_leaderboard.csv", "fusion_leaderboard.png"} <= artifacts
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=parent[0].info.run_id, artifact_path="fusion_leaderboard.csv")
    )
    assert list(table["method"]) == [r["method"] for r in board]


def test_benchmark_on_a_dataset_without_questions_or_probe(prefect_server, mlflow_store, tmp_path):
    """A plain manifest: ITM and reranking still run; VQA and the probe are left out, and the run says so."""
    from flows.fusion_benchmark import fusion_benchmark

    rows = []
    colours = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange"]
    for i in range(40):
        colour = colours[i % 8]
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        rows.append(
            {
                "image": f"{i}.png",
                "caption": f"a {colour} square number {i}",
                "split": "train" if i < 24 else "val" if i < 32 else "test",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    params = FusionBenchmarkParams(
        dataset=DatasetParams(name="manifest", options={"path": str(tmp_path / "pairs.csv")}),
        image_encoder={"name": "color-histogram"},
        text_encoder={"name": "tfidf", "options": {"max_features": 64}},
        fusions=["gated"],
        **{**FAST, "rerank_k": 3},
    )
    board = fusion_benchmark(params)
    assert (
        pd.isna(board[1]["vqa_accuracy"]) and pd.isna(board[1]["probe_accuracy"]) and 0.0 <= board[1]["itm_auc"] <= 1.0
    )
    _, parent, _ = _runs("itm-fusion-benchmark")
    assert parent[0].data.tags["tasks.vqa"] == "False" and parent[0].data.tags["tasks.probe"] == "False"
    assert board[1]["text_reader_tokens"] == 0.0  # auto: tfidf gives no tokens, so the pooled feature alone

    with pytest.raises(
        ValueError, match="text_reader tokens needs token features, and the text encoder 'tfidf' gives none"
    ):
        fusion_benchmark(params.model_copy(update={"text_reader": "tokens"}))

    with pytest.raises(ValueError, match="text_reader shared needs token features"):
        fusion_benchmark(params.model_copy(update={"text_reader": "shared"}))
    with pytest.raises(ValueError, match="no token-level features"):
        fusion_benchmark(params.model_copy(update={"fusions": ["cross-attention"]}))
    with pytest.raises(OptionsError, match="fusions\\[0\\]: unknown fusion 'gatd'.*Did you mean 'gated'"):
        fusion_benchmark(params.model_copy(update={"fusions": ["gatd"]}))
