"""Why a matcher scores an image-text pair as it does (the interpretability part of the workbench).

Explainers are plugins (kind ``explainer``, hook ``register_explainers``). Each gets a
:class:`PairScorer` (any matcher: a trained one, or an encoder pair), a PIL image and a text, and
returns an :class:`Attribution`: a heat map over the image (higher: the region supports the text)
and/or one value per word (higher: the word supports the pairing). The built-ins are in
``plugins/explainers.py``; :mod:`itm_core.judge.faithfulness` measures how faithful each one is.

Hidden image regions are painted with the image's median colour (its background, in most
pictures); hidden words are left out. Every explainer that hides things hides them the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from itm_core.contract.components import ContractError
from itm_core.contract.explaining import Attribution, PairScorer
from itm_core.errors import DataError, ParamsError


def words_of(text: str) -> list[str]:
    words = text.split()
    if not words:
        raise DataError("explain: the text is empty")
    return words


def fill_colour(image: Any) -> tuple[int, int, int]:
    """The colour hidden regions are painted with: the image's median colour."""
    r, g, b = (int(v) for v in np.median(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0))
    return r, g, b


def hide(image: Any, mask: np.ndarray, fill: tuple[int, int, int] | None = None) -> Any:
    """``image`` with the pixels where ``mask`` (``(h, w)`` bool, any resolution) is True painted over."""
    from PIL import Image

    rgb = image.convert("RGB")
    if mask.shape != (rgb.height, rgb.width):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(rgb.size, Image.Resampling.NEAREST)) > 0
    array = np.asarray(rgb).copy()
    array[mask] = fill if fill is not None else fill_colour(rgb)
    return Image.fromarray(array)


def cell_mask(cells: Sequence[int] | np.ndarray, grid: int, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool mask of the listed cells (row-major) of a ``grid x grid`` raster over ``size`` = (w, h)."""
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    for c in cells:
        row, col = divmod(int(c), grid)
        mask[row * h // grid : (row + 1) * h // grid, col * w // grid : (col + 1) * w // grid] = True
    return mask


def explain_with(explainer: Any, name: str, scorer: PairScorer, image: Any, text: str) -> Attribution:
    """Run one explainer, timed; its result is checked (finite values, one per word)."""
    start = time.perf_counter()
    out = explainer.explain(scorer, image.convert("RGB"), text)
    out.seconds = time.perf_counter() - start
    out.explainer = name
    if out.heat is not None and (out.heat.ndim != 2 or not np.isfinite(out.heat).all()):
        raise ContractError(
            f"explainer {name!r} returned a heat map of shape {out.heat.shape} with non-finite values or not 2-D"
        )
    if out.word_scores is not None and len(out.word_scores) != len(text.split()):
        raise ContractError(
            f"explainer {name!r} returned {len(out.word_scores)} word scores for {len(text.split())} words"
        )
    return out


# --- the original pair of explanations, kept for callers of explain_pair -------------------------


@dataclass
class Explanation:
    score: float
    heat: np.ndarray  # (grid, grid): score drop when each cell is hidden
    words: list[str]
    word_contributions: list[float]  # score drop without each word

    def top_words(self, n: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(self.word_contributions)[::-1][:n]
        return [(self.words[i], self.word_contributions[i]) for i in order]


def occlusion_heat(scorer: PairScorer, image: Any, text: str, grid: int) -> tuple[float, np.ndarray]:
    """The score, and the score drop when each cell of a ``grid x grid`` raster is hidden."""
    if grid < 1:
        raise ParamsError(f"explain: grid must be at least 1, got {grid}")
    image = image.convert("RGB")
    fill = fill_colour(image)
    occluded = [hide(image, cell_mask([c], grid, image.size), fill) for c in range(grid * grid)]
    scores = scorer.score_images([image, *occluded], text)
    return float(scores[0]), (scores[0] - scores[1:]).reshape(grid, grid)


def word_deletion(scorer: PairScorer, image: Any, text: str) -> tuple[float, list[float]]:
    """The score, and the score drop without each word."""
    words = words_of(text)
    scores = scorer.score_texts(image, [text] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))])
    return float(scores[0]), [float(scores[0] - s) for s in scores[1:]]


@torch.no_grad()
def explain_pair(scorer: Any, image: Any, text: str, grid: int = 8) -> Explanation:
    """Occlusion heat map over ``image`` and leave-one-word-out contributions for ``text``."""
    pair = scorer if isinstance(scorer, PairScorer) else PairScorer(scorer)
    words = words_of(text)
    score, heat = occlusion_heat(pair, image, text, grid)
    _, contributions = word_deletion(pair, image, text)
    return Explanation(score=score, heat=heat, words=words, word_contributions=contributions)


def attributions_figure(image: Any, text: str, found: Sequence[Attribution]) -> Any:
    """One figure: the image, then each explainer's heat map over it, then each one's word bars."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = [a for a in found if a.heat is not None]
    bars = [a for a in found if a.word_scores is not None]
    cols = 1 + len(maps)
    rows = 1 + (1 if bars else 0)
    fig = plt.figure(figsize=(max(3.2 * cols, 6), 3.4 * rows + (0.8 if bars else 0)))
    grid = fig.add_gridspec(rows, max(cols, len(bars) or 1))
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image)
    ax.set_title("\n".join(textwrap.wrap(text, 36)), fontsize=8)
    ax.axis("off")
    for n, a in enumerate(maps, start=1):
        ax = fig.add_subplot(grid[0, n])
        heat = a.heat_at(image.size)
        assert heat is not None  # maps are the attributions with a heat map
        limit = float(np.abs(heat).max()) or 1.0
        ax.imshow(image)
        ax.imshow(heat, cmap="RdBu_r", alpha=0.6, vmin=-limit, vmax=limit)
        ax.set_title(f"{a.explainer} ({a.seconds:.1f} s)", fontsize=9)
        ax.axis("off")
    if bars:
        span = max(cols, len(bars)) // len(bars)
        for n, a in enumerate(bars):
            ax = fig.add_subplot(grid[1, n * span : (n + 1) * span])
            values = a.word_scores
            assert values is not None  # bars are the attributions with word scores
            ax.bar(range(len(values)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
            ax.set_xticks(range(len(values)), a.words, rotation=60, ha="right", fontsize=7)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_title(f"{a.explainer}: per word", fontsize=9)
    fig.suptitle(f"score {found[0].score:.3f}" if found else "", fontsize=9)
    fig.tight_layout()
    return fig


def explanation_figure(image: Any, text: str, explanation: Explanation) -> Any:
    """The image, the occlusion heat map over it, and a bar per word."""
    return attributions_figure(
        image,
        text,
        [
            Attribution("occlusion", explanation.score, heat=np.asarray(explanation.heat)),
            Attribution(
                "word-deletion",
                explanation.score,
                words=explanation.words,
                word_scores=list(explanation.word_contributions),
            ),
        ],
    )
