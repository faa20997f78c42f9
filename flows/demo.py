"""``itm demo``: the whole workbench on built-in data (``scenes`` by default, or ``shapes``), offline.

Builds the data, retrains twice (pretrained towers, then classic features) so the registry holds a
champion and a challenger, evaluates both beside untrained heads as a chance reference, and
captions some test images with the champion.
"""

from __future__ import annotations

import time
from typing import Any

import mlflow
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.evaluate import evaluate
from flows.generate import generate
from flows.retrain import retrain
from itm_core.config import (
    ComponentParams,
    DatasetParams,
    EvaluateParams,
    GenerateParams,
    MatcherRef,
    RetrainParams,
)
from itm_core.judge.intervals import SHOWN, shown
from itm_core.models.training import ContrastiveTraining
from itm_core.ops.store import tracking_uri

PRETRAINED = (ComponentParams(name="efficientnet-lite0"), ComponentParams(name="minilm"))
CLASSIC = (ComponentParams(name="color-histogram"), ComponentParams(name="tfidf"))


def run_demo(
    dataset: DatasetParams | None = None,
    training: ContrastiveTraining | None = None,
    num_captions: int = 12,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    dataset = dataset or DatasetParams(name="scenes")
    training = training or ContrastiveTraining()
    start = time.perf_counter()
    runs = {}
    for label, (image, text) in (("pretrained", PRETRAINED), ("classic", CLASSIC)):
        console.rule(f"retrain: {image.name} + {text.name}")
        runs[label] = retrain(RetrainParams(dataset=dataset, image_encoder=image, text_encoder=text, training=training))
    console.rule("evaluate: leaderboard on the test split")
    board = evaluate(
        EvaluateParams(
            dataset=dataset,
            matchers=[
                MatcherRef(model_uri="models:/itm-matcher@champion", label="champion"),
                *(
                    MatcherRef(
                        model_uri=f"models:/itm-matcher/{r['model_version']}", label=f"{label} (v{r['model_version']})"
                    )
                    for label, r in runs.items()
                ),
                MatcherRef(
                    image_encoder=PRETRAINED[0],
                    text_encoder=PRETRAINED[1],
                    untrained_heads=True,
                    label="untrained heads (chance)",
                ),
            ],
        )
    )
    console.rule("generate: captions by the champion")
    metrics = [ComponentParams(name=m) for m in ("bleu", "rouge_l", "cider")]
    generated = generate(
        GenerateParams(
            dataset=dataset,
            num_images=num_captions,
            generator_options={"bank_dataset": dataset.name, "bank_options": dataset.options},
            metrics=metrics,
        )
    )
    captions = generated["generations"]
    seconds = time.perf_counter() - start

    table = Table(
        title=f"ITM demo: test-split retrieval ({seconds / 60:.1f} min)",
        caption=escape("[low, high]: 95% interval, bootstrap over the test images"),
    )
    for col in ("matcher", "i2t R@1", "i2t R@5", "t2i R@1", "t2i R@5", "rsum"):
        table.add_column(col, justify="left" if col == "matcher" else "right")
    for row in board:
        table.add_row(row["matcher"], *(shown(row, k).replace(" [", "\n[") for k in SHOWN))
    console.print(table)
    for label, r in runs.items():
        console.print(f"retrain {label}: model v{r['model_version']} - {r['decision']}")
    scores = ", ".join(
        f"{k} {generated['scores'][k]:.3f}" for k in ("bleu4", "rouge_l", "cider") if k in generated["scores"]
    )
    console.print(f"generate: {len(captions)} captions by the champion (generations.csv, caption_grid.png); {scores}")
    uri = mlflow.get_tracking_uri()
    ui = (
        f"open {uri}"
        if uri.startswith("http")
        else "`make up` (or `itm up`), then open http://127.0.0.1:5000"
        if uri == tracking_uri()
        else f"mlflow ui --backend-store-uri {uri}"
    )
    console.print(f"MLflow store: {uri}\nBrowse it: {ui}")
    return {"runs": runs, "leaderboard": board, "captions": captions, "seconds": seconds}
