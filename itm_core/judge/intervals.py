"""How sure a figure is: 95% intervals by bootstrap over the test units, and the paired interval of the
difference between two models scored on the same units.

For retrieval the unit resampled is the test image: it brings its image-to-text query and the
text-to-image queries of its captions, so every figure on a resample is computed as on the test split
itself (the recall of each direction over the queries drawn). Any figure that is a function of sums
over units (:class:`~itm_core.contract.evidence.UnitScores`) is resampled the same way: a resample is
a weighted sum of the units' columns, and one matrix product gives all of them at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from itm_core.contract.evidence import UnitScores
from itm_core.models.retrieval import KS, Ranks

RECALLS = tuple(f"{d}_r{k}" for d in ("i2t", "t2i") for k in KS)
SHOWN = ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "rsum")
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A figure, its ``confidence`` interval [``low``, ``high``], and the ``n`` units it rests on."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def signed(self, digits: int = 1) -> str:
        """``+30.0 [-120.0, +180.0]``: a difference and its interval."""
        return f"{self.value:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def plain(self, digits: int = 3) -> str:
        """``0.220 [0.180, 0.260]``: a figure and its interval."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class RecallFigures:
    """The figures of :func:`retrieval_scores`: recalls (fractions) and ``rsum`` (their sum, in %), as
    :func:`~itm_core.models.retrieval.recall_metrics` gives them."""

    def __call__(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        images, captions = np.maximum(sums[..., 7], 1), np.maximum(sums[..., 6], 1)
        out = {f"i2t_r{k}": sums[..., j] / images for j, k in enumerate(KS)}
        out.update({f"t2i_r{k}": sums[..., 3 + j] / captions for j, k in enumerate(KS)})
        out["rsum"] = 100.0 * sum(out[m] for m in RECALLS)
        return out


def retrieval_scores(r: Ranks, caption_image: Sequence[int] | torch.Tensor) -> UnitScores:
    """Per test image: its i2t hits at 1, 5, 10, its captions' t2i hits at 1, 5, 10, its number of
    captions, and 1 (so that sums over a resample give each direction's query count)."""
    owner = torch.as_tensor(caption_image, dtype=torch.long)
    n = len(r.i2t)
    if len(owner) != len(r.t2i):
        raise ValueError(f"{len(r.t2i)} caption ranks for {len(owner)} caption owners")
    cols = [(r.i2t <= k).double() for k in KS]
    cols += [torch.zeros(n, dtype=torch.float64).index_add_(0, owner, (r.t2i <= k).double()) for k in KS]
    cols += [torch.zeros(n, dtype=torch.float64).index_add_(0, owner, torch.ones(len(owner), dtype=torch.float64))]
    cols += [torch.ones(n, dtype=torch.float64)]
    return UnitScores(torch.stack(cols, 1).numpy(), RecallFigures())


def _weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)``: how often each unit is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _interval(point: float, drawn: np.ndarray, n: int, confidence: float) -> Interval:
    tail = 100.0 * (1 - confidence) / 2
    return Interval(point, float(np.percentile(drawn, tail)), float(np.percentile(drawn, 100 - tail)), n, confidence)


def intervals(
    scores: UnitScores,
    metrics: Sequence[str] | None = None,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Interval]:
    """The bootstrap interval of each of ``metrics`` (default: every figure) over the test units."""
    n = len(scores)
    if n == 0:
        raise ValueError("no test units to draw intervals from")
    point = scores.figures(scores.columns.sum(0))
    drawn = scores.figures(_weights(n, resamples, seed) @ scores.columns)
    return {m: _interval(float(point[m]), drawn[m], n, confidence) for m in metrics or list(point)}


def recall_intervals(
    r: Ranks,
    caption_image: Sequence[int] | torch.Tensor,
    metrics: Sequence[str] = SHOWN,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Interval]:
    """The bootstrap interval of each retrieval figure in ``metrics`` over the test images."""
    return intervals(retrieval_scores(r, caption_image), metrics, confidence, resamples, seed)


def paired_difference(
    new: UnitScores,
    old: UnitScores,
    metric: str,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """``metric(new) - metric(old)`` on the same test units, with its paired bootstrap interval: both
    models are scored on each resample of units, so what the units share cancels out."""
    if new.columns.shape != old.columns.shape:
        raise ValueError(
            f"a paired comparison needs both models scored on the same {new.unit}: "
            f"{new.columns.shape} against {old.columns.shape}"
        )
    weights = _weights(len(new), resamples, seed)
    drawn = new.figures(weights @ new.columns)[metric] - old.figures(weights @ old.columns)[metric]
    return _interval(new.value(metric) - old.value(metric), drawn, len(new), confidence)


def bounds(found: dict[str, Interval]) -> dict[str, float]:
    """``{metric}_low`` and ``{metric}_high`` of each interval: the columns a leaderboard carries."""
    return {f"{m}_{side}": getattr(iv, side) for m, iv in found.items() for side in ("low", "high")}


def with_bounds(scores: UnitScores, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Every figure of ``scores``, and the :func:`bounds` of ``metrics`` (default: all of them)."""
    return {**{m: scores.value(m) for m in scores.names()}, **bounds(intervals(scores, metrics))}


def shown(row: dict[str, Any], metric: str) -> str:
    """``0.220 [0.186, 0.256]`` (``rsum``: ``283.4 [266.0, 301.2]``) from a row with :func:`bounds`
    columns; the bare figure when the row has none."""
    digits = 1 if metric == "rsum" else 3
    if f"{metric}_low" not in row:
        return f"{row[metric]:.{digits}f}"
    return f"{row[metric]:.{digits}f} [{row[f'{metric}_low']:.{digits}f}, {row[f'{metric}_high']:.{digits}f}]"
