"""The default fusion benchmark as a user runs it: ``itm run fusion-benchmark`` with no parameters."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Row, run_flow

BUDGET_S = 20 * 60  # what the default benchmark should take on 2 cores


def bench_fusion(home: Path, quick: bool) -> list[Row]:
    """Every fusion on the default ``shapes`` data from a cold embedding cache: the whole run's wall time
    against the sum of its methods' own training-and-judging times (what remains is the encoding, the
    contrastive matcher, the hard-negative pools, MLflow and Prefect) and against 20 minutes."""
    options = {"n_train": 120, "n_val": 40, "n_test": 40} if quick else {}
    got = run_flow(home, "fusion-benchmark", options)
    board = [r for r in got["result"] if r["method"].endswith(" + ITM")]  # the similarity row trains no head
    methods = sum(float(r["train_seconds"]) for r in board)
    per = ", ".join(f"{r['method'].removesuffix(' + ITM')} {float(r['train_seconds']) / 60:.1f}" for r in board)
    figures = "; ".join(
        f"{r['method'].removesuffix(' + ITM')} probe {r['probe_accuracy']:.3f}, i2t/t2i R@1 combined "
        f"{r['i2t_r1_combined']:.3f}/{r['t2i_r1_combined']:.3f}"
        for r in board
    )
    return [
        {
            "what": f"`itm run fusion-benchmark`, defaults ({len(board)} fusions), cold cache, s",
            "value": got["wall"],
            "reference": "20 minutes",
            "ref_value": float(BUDGET_S),
            "ratio": got["wall"] / BUDGET_S,
            "target": "<= 1.0x",
            "note": f"peak RSS {got['rss'] / 2**30:.2f} GiB; minutes per fusion: {per}; {figures}",
        },
        {
            "what": "the same run, s",
            "value": got["wall"],
            "reference": "its fusions' own times, one after another",
            "ref_value": methods,
            "ratio": got["wall"] / methods,
            "target": "reported",
            "note": "the rest is encoding, the contrastive matcher and hard-negative pools and the text reader "
            "(shared by every fusion), MLflow and Prefect",
        },
    ]
