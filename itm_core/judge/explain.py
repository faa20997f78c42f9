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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Attribution:
    """What an explainer found. ``heat`` is ``(h, w)`` at any resolution over the whole image;
    ``word_scores`` has one value per whitespace-separated word of the text."""

    explainer: str
    score: float
    heat: np.ndarray | None = None
    words: list[str] = field(default_factory=list)
    word_scores: list[float] | None = None
    seconds: float = 0.0

    def heat_at(self, size: tuple[int, int]) -> np.ndarray | None:
        """The heat map resized (nearest cell) to ``size`` = (width, height)."""
        if self.heat is None:
            return None
        from PIL import Image

        return np.asarray(Image.fromarray(self.heat.astype(np.float32)).resize(size, Image.NEAREST))

    def top_words(self, n: int = 5) -> list[tuple[str, float]]:
        if self.word_scores is None:
            return []
        order = np.argsort(self.word_scores)[::-1][:n]
        return [(self.words[i], float(self.word_scores[i])) for i in order]


def words_of(text: str) -> list[str]:
    words = text.split()
    if not words:
        raise ValueError("explain: the text is empty")
    return words


def fill_colour(image: Any) -> tuple[int, int, int]:
    """The colour hidden regions are painted with: the image's median colour."""
    return tuple(int(v) for v in np.median(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0))


def hide(image: Any, mask: np.ndarray, fill: tuple[int, int, int] | None = None) -> Any:
    """``image`` with the pixels where ``mask`` (``(h, w)`` bool, any resolution) is True painted over."""
    from PIL import Image

    rgb = image.convert("RGB")
    if mask.shape != (rgb.height, rgb.width):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(rgb.size, Image.NEAREST)) > 0
    array = np.asarray(rgb).copy()
    array[mask] = fill if fill is not None else fill_colour(rgb)
    return Image.fromarray(array)


def cell_mask(cells: Sequence[int], grid: int, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool mask of the listed cells (row-major) of a ``grid x grid`` raster over ``size`` = (w, h)."""
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    for c in cells:
        row, col = divmod(int(c), grid)
        mask[row * h // grid : (row + 1) * h // grid, col * w // grid : (col + 1) * w // grid] = True
    return mask


class PairScorer:
    """What explainers call: the matcher's score of image-text pairs, batched, and (when its image
    encoder allows) a differentiable path from pixels to the score for gradient explainers."""

    def __init__(self, matcher: Any, batch: int = 64) -> None:
        self.matcher = matcher
        self.batch = batch

    def _image_emb(self, images: Sequence[Any]) -> torch.Tensor:
        if hasattr(self.matcher, "embed_image_objects"):
            parts = [
                self.matcher.embed_image_objects(list(images[s : s + self.batch]))
                for s in range(0, len(images), self.batch)
            ]
        else:
            parts = [
                self.matcher.image_encoder.encode(list(images[s : s + self.batch])).float()
                for s in range(0, len(images), self.batch)
            ]
        return torch.cat(parts) if parts else torch.zeros(0)

    @torch.no_grad()
    def score_images(self, images: Sequence[Any], text: str) -> np.ndarray:
        """Scores of many images against one text."""
        if not len(images):
            return np.zeros(0)
        image_emb = self._image_emb(images)
        text_emb = self.matcher.embed_texts([text])
        return self.matcher.similarity.pairwise(image_emb, text_emb.expand(len(image_emb), -1)).float().numpy()

    @torch.no_grad()
    def score_texts(self, image: Any, texts: Sequence[str]) -> np.ndarray:
        """Scores of one image against many texts."""
        if not len(texts):
            return np.zeros(0)
        text_emb = self.matcher.embed_texts(list(texts))
        image_emb = self._image_emb([image])
        return self.matcher.similarity.pairwise(image_emb.expand(len(text_emb), -1), text_emb).float().numpy()

    def score(self, image: Any, text: str) -> float:
        return float(self.score_images([image], text)[0])

    # --- gradients ------------------------------------------------------------------------------
    def image_encoder(self) -> Any:
        encoders = getattr(self.matcher, "encoders", None)
        enc = encoders.get("image") if isinstance(encoders, dict) else getattr(self.matcher, "image_encoder", None)
        return getattr(enc, "unwrapped", enc)

    def differentiable(self) -> bool:
        enc = self.image_encoder()
        return enc is not None and hasattr(enc, "encode_differentiable") and hasattr(enc, "preprocess")

    def require_differentiable(self, explainer: str) -> Any:
        if not self.differentiable():
            enc = self.image_encoder()
            raise ValueError(
                f"explainer {explainer!r} needs gradients through the image encoder, and "
                f"{type(enc).__name__} has no encode_differentiable; use occlusion, lime or shap with it"
            )
        return self.image_encoder()

    def pixels(self, image: Any) -> torch.Tensor:
        """The image as the encoder's input batch of one, ``(1, 3, H, W)``."""
        return torch.from_numpy(np.asarray(self.image_encoder().preprocess(image), dtype=np.float32)).unsqueeze(0)

    def forward(self, text: str) -> Any:
        """``f(x) -> (N,)`` scores of preprocessed images ``x`` against ``text``, with autograd."""
        enc = self.image_encoder()
        with torch.no_grad():
            text_emb = self.matcher.embed_texts([text]).float()

        def f(x: torch.Tensor) -> torch.Tensor:
            features = enc.encode_differentiable(x).float()
            emb = (
                self.matcher.embed_image_features(features)
                if hasattr(self.matcher, "embed_image_features")
                else features
            )
            return self.matcher.similarity.pairwise(emb, text_emb.expand(len(emb), -1))

        return f


def explain_with(explainer: Any, name: str, scorer: PairScorer, image: Any, text: str) -> Attribution:
    """Run one explainer, timed; its result is checked (finite values, one per word)."""
    start = time.perf_counter()
    out = explainer.explain(scorer, image.convert("RGB"), text)
    out.seconds = time.perf_counter() - start
    out.explainer = name
    if out.heat is not None and (out.heat.ndim != 2 or not np.isfinite(out.heat).all()):
        raise ValueError(
            f"explainer {name!r} returned a heat map of shape {out.heat.shape} with non-finite values or not 2-D"
        )
    if out.word_scores is not None and len(out.word_scores) != len(text.split()):
        raise ValueError(
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
        raise ValueError(f"explain: grid must be at least 1, got {grid}")
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
