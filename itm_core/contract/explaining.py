"""What an explainer receives and returns (kind ``explainer``): a :class:`PairScorer` over any
matcher, and an :class:`Attribution` of the score to image regions and words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from itm_core.errors import ParamsError


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

        return np.asarray(Image.fromarray(self.heat.astype(np.float32)).resize(size, Image.Resampling.NEAREST))

    def top_words(self, n: int = 5) -> list[tuple[str, float]]:
        if self.word_scores is None:
            return []
        order = np.argsort(self.word_scores)[::-1][:n]
        return [(self.words[i], float(self.word_scores[i])) for i in order]


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
            raise ParamsError(
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
