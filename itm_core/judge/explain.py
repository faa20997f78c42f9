"""Why a matcher scores an image-text pair as it does (the interpretability part of the workbench).

- Image: occlusion. The image is cut into ``grid x grid`` cells; each cell in turn is painted with
  the image's median colour (its background, in most pictures) and the pair is scored again. A cell's value is how much the score drops
  when it is hidden: positive where the image supports the text.
- Text: leave one word out. Each word's value is how much the score drops without it.

Both work with any matcher (a trained one, or an encoder pair), through its public embedding calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Explanation:
    score: float
    heat: np.ndarray  # (grid, grid): score drop when each cell is hidden
    words: list[str]
    word_contributions: list[float]  # score drop without each word

    def top_words(self, n: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(self.word_contributions)[::-1][:n]
        return [(self.words[i], self.word_contributions[i]) for i in order]


def _embed_images(scorer: Any, images: list[Any]) -> torch.Tensor:
    if hasattr(scorer, "embed_image_objects"):
        return scorer.embed_image_objects(images)
    return scorer.image_encoder.encode(images).float()


def _pair_scores(scorer: Any, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    return scorer.similarity.pairwise(image_emb, text_emb).float()


@torch.no_grad()
def explain_pair(scorer: Any, image: Any, text: str, grid: int = 8) -> Explanation:
    """Occlusion heat map over ``image`` and leave-one-word-out contributions for ``text``."""
    if grid < 1:
        raise ValueError(f"explain: grid must be at least 1, got {grid}")
    words = text.split()
    if not words:
        raise ValueError("explain: the text is empty")
    image = image.convert("RGB")
    w, h = image.size
    fill = tuple(int(v) for v in np.median(np.asarray(image).reshape(-1, 3), axis=0))
    occluded = []
    for row in range(grid):
        for col in range(grid):
            box = (col * w // grid, row * h // grid, (col + 1) * w // grid, (row + 1) * h // grid)
            copy = image.copy()
            copy.paste(fill, box)
            occluded.append(copy)
    image_emb = _embed_images(scorer, [image, *occluded])
    text_variants = [text] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    text_emb = scorer.embed_texts(text_variants)
    base = float(_pair_scores(scorer, image_emb[:1], text_emb[:1])[0])
    hidden = _pair_scores(scorer, image_emb[1:], text_emb[:1].expand(len(occluded), -1))
    without = _pair_scores(scorer, image_emb[:1].expand(len(words), -1), text_emb[1:])
    return Explanation(
        score=base,
        heat=(base - hidden).reshape(grid, grid).numpy(),
        words=words,
        word_contributions=[base - float(s) for s in without],
    )


def explanation_figure(image: Any, text: str, explanation: Explanation) -> Any:
    """The image, the occlusion heat map over it, and a bar per word."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    axes[0].imshow(image)
    axes[0].set_title("\n".join(textwrap.wrap(text, 40)), fontsize=9)
    heat = explanation.heat
    limit = float(np.abs(heat).max()) or 1.0
    big = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.size, Image.NEAREST))
    axes[1].imshow(image)
    shown = axes[1].imshow(big, cmap="RdBu_r", alpha=0.6, vmin=-limit, vmax=limit)
    axes[1].set_title(f"occlusion: score drop when hidden (score {explanation.score:.3f})", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    for ax in axes[:2]:
        ax.axis("off")
    values = explanation.word_contributions
    axes[2].bar(range(len(values)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
    axes[2].set_xticks(range(len(values)), explanation.words, rotation=45, ha="right", fontsize=9)
    axes[2].axhline(0, color="black", linewidth=0.8)
    axes[2].set_title("per word: score drop without the word", fontsize=9)
    fig.tight_layout()
    return fig
