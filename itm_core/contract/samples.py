"""The sample inputs of the conformance kit, and a tiny scorer (a random conv encoder and hashed words)
that explainers are checked against: cheap, deterministic, with gradients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from itm_core.contract.explaining import PairScorer


def sample_images() -> list[Image.Image]:
    """Three small RGB images that differ in colour, layout and size."""
    a = Image.new("RGB", (64, 64), (200, 30, 30))
    b = Image.new("RGB", (80, 48), (20, 20, 220))
    b.paste((250, 250, 20), (10, 10, 40, 40))
    c = Image.new("RGB", (48, 96), (30, 160, 40))
    c.paste((0, 0, 0), (0, 48, 48, 96))
    return [a, b, c]


def odd_images() -> list[Image.Image]:
    """Images users do have: grayscale, RGBA, palette, tiny, very wide."""
    return [
        Image.new("L", (40, 40), 90),
        Image.new("RGBA", (40, 40), (10, 200, 10, 128)),
        Image.new("RGB", (40, 40), (255, 0, 255)).convert("P"),
        Image.new("RGB", (3, 2), (1, 2, 3)),
        Image.new("RGB", (400, 24), (120, 120, 0)),
    ]


SAMPLE_TEXTS = ["a red circle on the left", "two blue squares", "a small green star at the top"]
ODD_TEXTS = ["", "   ", "word " * 2000, "naïve café 🙂 日本語のテキスト", "A" * 3000]


class _TinyConvEncoder:
    """A small random convolutional image encoder with gradients and a Grad-CAM layer: the image side
    of the scorer that explainers are checked against."""

    modality, dim, size = "image", 8, 32

    def __init__(self) -> None:
        from torch import nn

        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2)
        ).eval()
        self.cam_layer = self.net[2]

    def preprocess(self, image: Image.Image) -> Any:
        import numpy as np

        return (
            np.asarray(image.convert("RGB").resize((self.size, self.size)), dtype=np.float32).transpose(2, 0, 1) / 255.0
        )

    def encode_differentiable(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        import numpy as np

        with torch.no_grad():
            return (
                self.encode_differentiable(torch.from_numpy(np.stack([self.preprocess(i) for i in items])))
                if items
                else torch.zeros(0, self.dim)
            )


class _HashedWords:
    """A bag of hashed words: the text side of that scorer."""

    modality, dim = "text", 8

    def encode(self, items: Sequence[str]) -> torch.Tensor:
        import zlib

        out = torch.zeros(len(items), self.dim)
        for n, text in enumerate(items):
            for w in text.lower().split():
                out[n, zlib.crc32(w.encode()) % self.dim] += 1.0
        return out


class _TinyPair:
    """The two tiny encoders compared by cosine: the matcher behind :func:`tiny_scorer`."""

    def __init__(self) -> None:
        self.image_encoder, self.text_encoder = _TinyConvEncoder(), _HashedWords()

    @staticmethod
    def pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)

    @property
    def similarity(self) -> _TinyPair:
        return self

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder.encode(list(texts))


def tiny_scorer() -> PairScorer:
    """A :class:`~itm_core.contract.explaining.PairScorer` over a random conv encoder and hashed words,
    compared by cosine: cheap, deterministic, with gradients."""
    return PairScorer(_TinyPair())
