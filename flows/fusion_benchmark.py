"""The ``fusion-benchmark`` flow: every fusion method on the same data, seed and budget, one leaderboard."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.tasks import checked_by_encoding, load_data, log_dataset, log_leaderboard, without_skipped
from itm_core.config import FusionBenchmarkParams
from itm_core.contract.registry import names, spec
from itm_core.data import SkippedImage
from itm_core.encode.embed import EmbeddingCache
from itm_core.encode.features import FeatureSplit
from itm_core.judge.benchmark import (
    BenchmarkData,
    SplitFeatures,
    attention_examples,
    benchmark_fusion,
    encode_split_features,
    has_probe,
    has_qa,
    prepare,
    reads_text_tokens,
    similarity_results,
    uses_tokens,
)
from itm_core.judge.evaluation import build_encoders
from itm_core.judge.shared_reader import share_reader
from itm_core.models.training import train_contrastive
from itm_core.ops.tracking import tracked_flow, tracked_run
from itm_core.progress import Tracker, scope

RETRIEVAL = [f"{d}_r1_{s}" for d in ("i2t", "t2i") for s in ("contrastive", "itm", "combined")]
COLUMNS = [
    "method",
    "vqa_accuracy",
    "itm_accuracy",
    "itm_auc",
    "probe_accuracy",
    "probe_accuracy_color",
    "probe_accuracy_shape",
    "probe_accuracy_position",
    *RETRIEVAL,
    *(f"{c}_{side}" for c in RETRIEVAL for side in ("low", "high")),
    "rerank_i2t_k",
    "rerank_i2t_weight",
    "rerank_t2i_k",
    "rerank_t2i_weight",
    "rerank_i2t_fixed",
    "rerank_i2t_broke",
    "rerank_i2t_ceiling",
    "rerank_t2i_fixed",
    "rerank_t2i_broke",
    "rerank_t2i_ceiling",
    "text_reader_tokens",
    "parameters",
    "train_seconds",
]


@task(name="encode", cache_policy=NO_CACHE)
def encode_all(
    params: FusionBenchmarkParams, splits: dict[str, Any], methods: list[str]
) -> tuple[dict[str, SplitFeatures], list[SkippedImage]]:
    """Pooled (and, for token-level fusions, token) features of images, captions, probe captions and
    questions, and the images skipped: each image is checked in the pass that encodes it."""
    image_encoder, text_encoder = build_encoders(params.image_encoder, params.text_encoder, splits["train"])
    cache, tokens, text_tokens = (
        EmbeddingCache(),
        uses_tokens(methods),
        reads_text_tokens(params.text_reader, text_encoder),
    )
    features, skipped = {}, []
    for s, d in splits.items():
        d, _, bad = checked_by_encoding(image_encoder, d, cache, params.dataset.on_bad_image)
        skipped += bad
        features[s] = encode_split_features(
            image_encoder, text_encoder, d, cache, tokens, probe=True, text_tokens=text_tokens
        )
    return features, skipped


@task(name="train-similarity", cache_policy=NO_CACHE)
def train_similarity(params: FusionBenchmarkParams, features: dict[str, SplitFeatures]) -> BenchmarkData:
    """The contrastive matcher (heads over the locked towers), the plain-similarity baseline and hard-negative
    miner, and the pair and probe sets built from its embeddings once for every method."""
    t = params.contrastive

    def split(f: SplitFeatures) -> FeatureSplit:
        return FeatureSplit(f.image.pooled, f.text.pooled, torch.tensor(f.data.caption_image))

    torch.manual_seed(params.seed)
    matcher = t.build_matcher(
        params.image_encoder.model_dump(),
        params.text_encoder.model_dump(),
        features["train"].image.pooled.shape[1],
        features["train"].text.pooled.shape[1],
        len(features["train"].image.pooled),
    )
    options = t.model_copy(update={"seed": params.seed})  # the benchmark's seed seeds every model it trains
    train_contrastive(matcher, split(features["train"]), split(features["val"]), options)
    return prepare(features, matcher, params.dataset_negatives)


def shares_reader(params: FusionBenchmarkParams, data: BenchmarkData, methods: list[str]) -> bool:
    """Whether the fusions get the shared text reader: ``shared``, or ``auto`` with token features, and
    at least one fusion of pooled features."""
    has_tokens = data.features["train"].text.tokens is not None
    wanted = params.text_reader == "shared" or (params.text_reader == "auto" and has_tokens)
    return wanted and any(not uses_tokens([m]) for m in methods)


@task(name="train-text-reader", cache_policy=NO_CACHE)
def train_reader(params: FusionBenchmarkParams, data: BenchmarkData) -> BenchmarkData:
    """The shared text reader, trained once with the ITM head of ``reader_fusion``; every text of the data
    is then read by it."""
    name = params.reader_fusion
    options = {"dim": params.dim, **params.fusion_options.get(name, {})}

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({f"text_reader_{k}": v for k, v in metrics.items()}, step=epoch)

    with scope("text reader"):
        read, result = share_reader(data, name, options, params.reader, params, params.seed, on_epoch)
    mlflow.log_metrics(
        {
            "text_reader_best_epoch": result.best_epoch,
            "text_reader_best_val_select": result.best_value,
            "text_reader_seconds": result.seconds,
        }
    )
    return read


@task(name="benchmark-fusion", cache_policy=NO_CACHE)
def run_method(name: str, params: FusionBenchmarkParams, data: BenchmarkData) -> dict[str, Any]:
    """Train and judge one fusion in a nested MLflow run."""
    options = {"dim": params.dim, **params.fusion_options.get(name, {})}
    with tracked_run(params.experiment, name, {"fusion": name, **options}, nested=True):

        def on_epoch(head: str, epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({f"{head}_{k}": v for k, v in metrics.items()}, step=epoch)

        def on_itm(head: Any) -> None:  # fusions that attend to image patches show where each caption looks
            import matplotlib.pyplot as plt

            examples = attention_examples(head, data.features["test"])
            if examples:
                fig = attention_figure(examples)
                mlflow.log_figure(fig, "attention_maps.png")
                plt.close(fig)

        vqa = params.vqa if has_qa(data.features["train"].data) else None
        metrics = benchmark_fusion(name, options, data, params, params.itm, vqa, params.seed, on_epoch, on_itm)
        mlflow.log_metrics(metrics)
    print(
        f"{name}: "
        + ", ".join(
            f"{k} {metrics[k]:.3f}"
            for k in (
                "probe_accuracy",
                "itm_auc",
                "itm_only_i2t_r1",
                "reranked_i2t_r1",
                "itm_only_t2i_r1",
                "reranked_t2i_r1",
                "vqa_accuracy",
            )
            if k in metrics
        )
    )
    return metrics


def attention_figure(examples: list[tuple[str, str, Any]]) -> Any:
    """Each test image with the ITM head's text-to-patch attention over it and the caption as title."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 3.6), squeeze=False)
    for ax, (path, caption, heat) in zip(axes[0], examples):
        image = Image.open(path).convert("RGB")
        big = Image.fromarray(heat.float().numpy()).resize(image.size, Image.Resampling.BILINEAR)
        ax.imshow(image)
        ax.imshow(big, cmap="magma", alpha=0.55)
        ax.set_title("\n".join(textwrap.wrap(caption, 30)), fontsize=7)
        ax.axis("off")
    fig.suptitle("cross-attention: where the caption looks (last layer, mean over heads and words)", fontsize=8)
    fig.tight_layout()
    return fig


def bar_chart(board: pd.DataFrame) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [
        c
        for c in (
            "probe_accuracy",
            "vqa_accuracy",
            "itm_auc",
            "i2t_r1_contrastive",
            "i2t_r1_combined",
            "t2i_r1_contrastive",
            "t2i_r1_combined",
        )
        if c in board and board[c].notna().any()
    ]
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(board), 4))
    width = 0.8 / max(1, len(shown))
    for n, col in enumerate(shown):
        ax.bar([i + n * width for i in range(len(board))], board[col].fillna(0), width, label=col)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(board))], board["method"], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=min(4, len(shown)))
    ax.set_title("fusion benchmark (test split)")
    fig.tight_layout()
    return fig


@tracked_flow("fusion-benchmark")
def fusion_benchmark(params: FusionBenchmarkParams = FusionBenchmarkParams()) -> list[dict[str, Any]]:
    """Every fusion plugin (or ``fusions``) trained for ITM (with reranking and the probe) and VQA on
    the same data, seed and budget; a leaderboard against plain contrastive similarity."""
    import matplotlib.pyplot as plt

    methods = params.fusions or names("fusion")
    for name in methods:  # an unknown name fails now, listing the known ones, not after the encoding
        spec("fusion", name)
    data, _ = load_data(params.dataset, check=False)  # each image is checked in the encoding pass that reads it
    splits = {s: data.split(s) for s in ("train", "val", "test")}
    with tracked_run(params.experiment, params.run_name or f"fusion benchmark on {data.name}", params.model_dump()):
        mlflow.set_tags({"tasks.vqa": str(has_qa(data)), "tasks.probe": str(has_probe(data))})
        features, skipped = encode_all(params, splits, methods)
        log_dataset(without_skipped(data, skipped), skipped)
        shared = train_similarity(params, features)
        if shares_reader(params, shared, methods):
            shared = train_reader(params, shared)
        similarity = similarity_results(shared)
        mlflow.log_metrics({f"similarity_{k}": v for k, v in similarity.items()})
        contrastive = {
            f"{d}_r1_contrastive{end}": similarity[f"test_{d}_r1{end}"]
            for d in ("i2t", "t2i")
            for end in ("", "_low", "_high")
        }
        rows = [
            {
                "method": "similarity (contrastive)",
                **contrastive,
                **{k: v for k, v in similarity.items() if k.startswith("probe_")},
            }
        ]
        progress = Tracker("fusion benchmark", len(methods), "fusion")
        for name in methods:
            with scope(name):
                m = run_method(name, params, shared)
            progress.advance(note=f"{name} done")
            rows.append(
                {
                    "method": f"{name} + ITM",
                    **m,
                    **contrastive,
                    **{
                        f"{d}_r1_{column}{end}": m[f"{source}_{d}_r1{end}"]
                        for d in ("i2t", "t2i")
                        for column, source in (("itm", "itm_only"), ("combined", "reranked"))
                        for end in ("", "_low", "_high")
                    },
                }
            )
        progress.finish()
        board = pd.DataFrame(rows).reindex(columns=COLUMNS)
        log_leaderboard(
            board,
            "fusion-leaderboard",
            "Test split. R@1: contrastive; the ITM logit alone over the top rerank_k; combined (ITM logit + "
            "weight x similarity, k and weight chosen on validation; k 0 means validation chose no reranking). "
            "_low, _high: the 95% interval, bootstrap over the test images.",
        )
        fig = bar_chart(board)
        mlflow.log_figure(fig, "fusion_leaderboard.png")
        plt.close(fig)
    return board.to_dict("records")
