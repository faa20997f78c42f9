"""How faithful an explanation is: does the score follow what the explainer says matters?

- **Deletion** (image): the image's ``grid x grid`` cells are ranked by the explainer's mean heat;
  the most important cells are hidden a fraction at a time and the pair is scored again. A faithful
  map makes the score fall fast: a *lower* area under the curve is better.
- **Insertion** (image): start from the image with every cell hidden and reveal the most important
  cells first: a *higher* area is better.
- **Word deletion / insertion**: the same over words (removed, or kept, most important first).
- **Pointing**: where the data says where the named object is (one object per image, as in
  ``shapes`` and ``scenes``), whether the heat map's peak falls on it (within its radius plus
  ``POINTING_TOLERANCE`` of the image side).

Areas are of the raw score against the fraction hidden or revealed (0 to 1), so they compare
explainers on the same pairs and matcher; a ``random`` order over the same pairs is the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from itm_core.contract.explaining import Attribution, PairScorer
from itm_core.judge.explain import cell_mask, fill_colour, hide

POINTING_TOLERANCE = 1 / 16


def cell_heat(heat: np.ndarray, grid: int) -> np.ndarray:
    """The heat map averaged over a ``grid x grid`` raster (box filter; any input resolution)."""
    from PIL import Image

    return np.asarray(
        Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F").resize((grid, grid), Image.Resampling.BOX),
        dtype=np.float64,
    )


def area(curve: Sequence[float] | np.ndarray) -> float:
    """Area under a curve sampled evenly on [0, 1]."""
    y = np.asarray(curve, dtype=np.float64)
    return float(((y[1:] + y[:-1]) / 2).sum() / (len(y) - 1)) if len(y) > 1 else float(y[0])


def image_curves(
    scorer: PairScorer, image: Any, text: str, order: Sequence[int] | np.ndarray, grid: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (``steps + 1`` scores each) for cells in ``order``, most important first."""
    image = image.convert("RGB")
    fill = fill_colour(image)
    n = grid * grid
    counts = np.round(np.linspace(0, n, steps + 1)).astype(int)
    deleted = [hide(image, cell_mask(order[:k], grid, image.size), fill) for k in counts]
    inserted = [hide(image, ~cell_mask(order[:k], grid, image.size), fill) for k in counts]
    scores = scorer.score_images(deleted + inserted, text)
    return scores[: steps + 1], scores[steps + 1 :]


def word_curves(
    scorer: PairScorer, image: Any, text: str, order: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves over the words, in ``order`` (most important first)."""
    words = text.split()
    texts = []
    for keep_top in (False, True):
        for k in range(len(words) + 1):
            top = set(int(i) for i in order[:k])
            texts.append(" ".join(w for i, w in enumerate(words) if (i in top) == keep_top))
    scores = np.nan_to_num(scorer.score_texts(image, texts))
    return scores[: len(words) + 1], scores[len(words) + 1 :]


def peak(heat: np.ndarray) -> tuple[float, float] | None:
    """Where the heat map is highest, as fractions (x, y) of the side: the centre of the cells (or
    superpixel) holding the maximum; None for a flat map."""
    if not np.isfinite(heat).all() or float(heat.max()) == float(heat.min()):
        return None
    rows, cols = np.nonzero(np.isclose(heat, heat.max(), rtol=1e-6, atol=0.0))
    return (float(cols.mean()) + 0.5) / heat.shape[1], (float(rows.mean()) + 0.5) / heat.shape[0]


def points_at(heat: np.ndarray, region: dict[str, float]) -> bool:
    """Whether the heat map's peak lies on the object (``cx``, ``cy``, ``r`` as fractions of the side)."""
    where = peak(heat)
    if where is None:
        return False
    return (where[0] - region["cx"]) ** 2 + (where[1] - region["cy"]) ** 2 <= (region["r"] + POINTING_TOLERANCE) ** 2


def named_object(objects: Any) -> dict[str, float] | None:
    """The region of an image's only object, when the data says where it is (``objects``: a list of
    dicts with ``cx``, ``cy``, ``r``); None otherwise."""
    if isinstance(objects, list) and len(objects) == 1 and all(k in objects[0] for k in ("cx", "cy", "r")):
        return {k: float(objects[0][k]) for k in ("cx", "cy", "r")}
    return None


@dataclass
class Faithfulness:
    """One explainer on one pair."""

    deletion: float | None = None
    insertion: float | None = None
    word_deletion: float | None = None
    word_insertion: float | None = None
    pointing: bool | None = None


def judge(
    scorer: PairScorer,
    image: Any,
    text: str,
    found: Attribution,
    grid: int = 8,
    steps: int = 8,
    region: dict[str, float] | None = None,
) -> Faithfulness:
    """The curves' areas (and pointing, given the named object's region) for one attribution."""
    out = Faithfulness()
    if found.heat is not None:
        order = np.argsort(-cell_heat(found.heat, grid).flatten(), kind="stable")
        deletion, insertion = image_curves(scorer, image, text, order, grid, steps)
        out.deletion, out.insertion = area(deletion), area(insertion)
        if region is not None:
            out.pointing = points_at(found.heat, region)
    if found.word_scores is not None:
        order = np.argsort(-np.asarray(found.word_scores, dtype=np.float64), kind="stable")
        deletion, insertion = word_curves(scorer, image, text, order)
        out.word_deletion, out.word_insertion = area(deletion), area(insertion)
    return out


def random_reference(
    scorer: PairScorer,
    image: Any,
    text: str,
    seed: int,
    grid: int = 8,
    steps: int = 8,
    region: dict[str, float] | None = None,
) -> Faithfulness:
    """The same measures for a random order of cells and words (and a random peak for pointing)."""
    rng = np.random.default_rng(seed)
    n_words = len(text.split())
    found = Attribution(
        "random", 0.0, heat=rng.random((grid, grid)), words=text.split(), word_scores=list(rng.random(n_words))
    )
    return judge(scorer, image, text, found, grid, steps, region)
