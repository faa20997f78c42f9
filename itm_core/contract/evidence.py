"""What a figure rests on: per test unit (an image, a prompt) the columns whose sums give the figure.

A metric whose value is a function of sums over test units (a recall, BLEU from its n-gram counts, a
mean of per-image scores) can say so with :class:`UnitScores`. That is all a bootstrap needs: a
resample of the units is a weighted sum of their columns, so the intervals of
:mod:`itm_core.judge.intervals`, and the paired test that decides a promotion, work on any such
metric, built in or from a plugin (``Metric.units``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Figures = Callable[[np.ndarray], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class UnitScores:
    """``columns`` ``(n_units, k)``: per test unit, what it adds to the sums; ``figures`` maps summed
    columns ``(..., k)`` to each named figure ``(...)``. ``unit`` names the units in messages
    (``"test images"``). Two ``UnitScores`` are paired when row ``i`` of both is the same unit."""

    columns: np.ndarray
    figures: Figures
    unit: str = "test images"

    def __len__(self) -> int:
        return len(self.columns)

    def value(self, metric: str) -> float:
        """``metric`` on all units: what the metric itself reports."""
        out = self.figures(self.columns.sum(0))
        if metric not in out:
            raise KeyError(f"{metric!r} is not among these scores' figures: {', '.join(out)}")
        return float(out[metric])

    def names(self) -> list[str]:
        return list(self.figures(self.columns.sum(0)))

    def join(self, other: UnitScores) -> UnitScores:
        """The figures of both, on the same units (row ``i`` of each is the same unit)."""
        if len(self) != len(other):
            raise ValueError(f"cannot join scores of {len(self)} and {len(other)} units")
        return UnitScores(
            np.concatenate([self.columns, other.columns], 1),
            Joined(self.figures, other.figures, self.columns.shape[1]),
            self.unit,
        )


@dataclass(frozen=True)
class Joined:
    """The figures of two joined :class:`UnitScores`: the first ``split`` columns are the first's."""

    first: Figures
    second: Figures
    split: int

    def __call__(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        return {**self.first(sums[..., : self.split]), **self.second(sums[..., self.split :])}


@dataclass(frozen=True)
class Means:
    """The figures of :func:`mean_scores`: each named column's sum over the last column's (the count)."""

    names: tuple[str, ...]

    def __call__(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        count = np.maximum(sums[..., -1], 1)
        return {name: sums[..., j] / count for j, name in enumerate(self.names)}


def mean_scores(values: Mapping[str, Sequence[float] | np.ndarray], unit: str = "test images") -> UnitScores:
    """Figures that are means over units of a per-unit value (``{"r_precision": hits}``)."""
    names = tuple(values)
    per_unit = [np.asarray(values[n], dtype=np.float64) for n in names]
    lengths = {len(v) for v in per_unit}
    if len(lengths) != 1:
        raise ValueError(f"per-unit values of different lengths: { {n: len(v) for n, v in zip(names, per_unit)} }")
    n = lengths.pop()
    return UnitScores(np.stack([*per_unit, np.ones(n)], 1), Means(names), unit)
