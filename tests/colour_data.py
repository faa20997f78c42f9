"""Solid-colour images whose captions name their colour, and the text-to-image options the generation
tests train with: small enough to train in seconds."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220)}


def colour_images(per_colour: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Noisy solid-colour squares and the colour of each."""
    rng = np.random.default_rng(seed)
    images, names = [], []
    for name, rgb in COLOURS.items():
        for _ in range(per_colour):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (16, 16, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            names.append(name)
    return images, names


def t2i(model: str = "cvae", **options: Any) -> Any:
    """A text-to-image model's options for these tests: its defaults, in float32 (whatever the CPU
    offers) and without a time limit, and ``options``."""
    from itm_core.models.text_to_image import FAMILIES

    return FAMILIES[model].options(**{"precision": "fp32", "time_limit_s": 0, **options})


def mean_colour(image: Image.Image) -> str:
    """The named colour nearest to the image's mean pixel."""
    mean = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    return min(COLOURS, key=lambda c: float(((mean - np.array(COLOURS[c])) ** 2).sum()))


def text_features(prompts: list[str], encoder, tokens: bool = False):
    from itm_core.models.text_to_image import TextFeatures

    return TextFeatures(encoder.encode(prompts), None, torch.arange(len(prompts)))
