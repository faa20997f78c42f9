"""One component of each kind, all about named colours, to copy when writing a plugin.

- encoder ``colour-names``: images and texts in one 8-dimensional space of colour names
- similarity ``neg-euclidean``: minus the Euclidean distance
- fusion ``hadamard``: projected image and text features multiplied element-wise (trainable)
- generator ``colour-namer``: captions an image with its dominant colour
- metric ``exact-match``: share of generated captions equal to one of the references
- dataset ``colour-swatches``: noisy swatches of one colour each, written to a folder
- explainer ``quadrants``: how much the score drops when each quarter of the image is hidden
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from itm_core import hookimpl
from itm_core.components import Dataset, Encoder, Explainer, Fusion, Generator, Metric, Similarity
from itm_core.data import ImageTextSet, load_manifest

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
NAMES = list(COLOURS)
PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)


def colour_shares(image: Any) -> torch.Tensor:
    """The share of an image's pixels nearest to each named colour, ``(8,)``."""
    import numpy as np

    pixels = torch.from_numpy(np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32)).reshape(-1, 3)
    nearest = torch.cdist(pixels, PALETTE).argmin(1)
    return torch.bincount(nearest, minlength=len(NAMES)).float() / len(pixels)


class ColourNames(Encoder):
    """``modality="image"``: colour shares of the pixels; ``"text"``: colour words mentioned. Both unit length."""

    dim = len(NAMES)

    def __init__(self, modality: str = "image") -> None:
        if modality not in ("image", "text"):
            raise ValueError(f"colour-names: modality must be 'image' or 'text', got {modality!r}")
        self.modality = modality

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        if self.modality == "image":
            rows = [colour_shares(img) for img in items]
        else:
            rows = [torch.tensor([float(name in text.lower().split()) for name in NAMES]) for text in items]
        out = torch.stack(rows) if rows else torch.zeros(0, self.dim)
        return nn.functional.normalize(out, dim=-1)


class NegEuclidean(Similarity):
    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(a.float(), b.float())

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -(a.float() - b.float()).norm(dim=-1)


class Hadamard(nn.Module, Fusion):
    """``tanh(W_i x_i) * tanh(W_t x_t)``: a small trainable multiplicative fusion."""

    def __init__(self, image_dim: int = 8, text_dim: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.image_dim, self.text_dim, self.dim = image_dim, text_dim, dim
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)

    def fuse(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.image_proj(image)) * torch.tanh(self.text_proj(text))


class ColourNamer(Generator):
    """Captions an image as "a <dominant colour> swatch"."""

    task = "image-to-text"

    def __init__(self, template: str = "a {colour} swatch") -> None:
        if "{colour}" not in template:
            raise ValueError(f"colour-namer: template must contain '{{colour}}', got {template!r}")
        self.template = template

    def generate(self, inputs: Sequence[Any], **options: Any) -> list[str]:
        return [self.template.format(colour=NAMES[int(colour_shares(img).argmax())]) for img in inputs]


class ExactMatch(Metric):
    """``exact_match``: the share of predictions equal (ignoring case and spaces) to one of their references."""

    task = "captioning"

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]], **_: Any) -> dict[str, float]:
        if len(predictions) != len(references):
            raise ValueError(f"exact-match: {len(predictions)} predictions for {len(references)} reference lists")
        if not predictions:
            return {"exact_match": 0.0}
        norm = lambda s: " ".join(s.lower().split())  # noqa: E731
        hits = sum(norm(p) in {norm(r) for r in refs} for p, refs in zip(predictions, references))
        return {"exact_match": hits / len(predictions)}


class ColourSwatches(Dataset):
    """``per_colour`` noisy swatches of each named colour, three captions each, split 60/20/20."""

    def __init__(self, per_colour: int = 10, seed: int = 0, root: str | None = None) -> None:
        if per_colour < 5:
            raise ValueError(f"colour-swatches: per_colour must be at least 5 (for three splits), got {per_colour}")
        self.per_colour, self.seed = per_colour, seed
        base = Path(root) if root else Path(os.environ.get("ITM_HOME", ".itm")) / "data"
        self.folder = base / f"colour-swatches-{per_colour}-{seed}"

    def load(self) -> ImageTextSet:
        from PIL import Image

        manifest = self.folder / "manifest.jsonl"
        if not manifest.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            rng = random.Random(self.seed)
            rows = []
            for name, rgb in COLOURS.items():
                for i in range(self.per_colour):
                    pixels = bytes(max(0, min(255, c + rng.randint(-25, 25))) for _ in range(24 * 24) for c in rgb)
                    rel = f"{name}-{i}.png"
                    Image.frombytes("RGB", (24, 24), pixels).save(self.folder / rel)
                    split = "train" if i < 0.6 * self.per_colour else "val" if i < 0.8 * self.per_colour else "test"
                    rows.append(
                        {
                            "image": rel,
                            "caption": [f"a {name} swatch", f"something {name}", f"the colour {name}"],
                            "split": split,
                        }
                    )
            manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return load_manifest(manifest, name="colour-swatches")


class Quadrants(Explainer):
    """A 2 x 2 heat map: the score drop when each quarter of the image is painted black."""

    modalities = ("image",)

    def explain(self, scorer: Any, image: Any, text: str) -> Any:
        import numpy as np

        from itm_core.judge.explain import Attribution

        image = image.convert("RGB")
        w, h = image.size
        hidden = []
        for row in range(2):
            for col in range(2):
                copy = image.copy()
                copy.paste((0, 0, 0), (col * w // 2, row * h // 2, (col + 1) * w // 2, (row + 1) * h // 2))
                hidden.append(copy)
        scores = scorer.score_images([image, *hidden], text)  # any matcher's scores, through the scorer
        return Attribution(
            "quadrants",
            float(scores[0]),
            heat=(scores[0] - scores[1:]).reshape(2, 2).astype(np.float32),
            words=text.split(),
        )


@hookimpl
def register_encoders(register):
    register(
        "colour-names",
        ColourNames,
        modality="image|text",
        dim=len(NAMES),
        description="Images and texts as shares of 8 colour names",
    )


@hookimpl
def register_similarities(register):
    register("neg-euclidean", NegEuclidean, description="Minus the Euclidean distance")


@hookimpl
def register_fusions(register):
    register("hadamard", Hadamard, trainable=True, description="tanh-projected features multiplied element-wise")


@hookimpl
def register_generators(register):
    register("colour-namer", ColourNamer, task="image-to-text", description="Names an image's dominant colour")


@hookimpl
def register_metrics(register):
    register(
        "exact-match",
        ExactMatch,
        task="captioning",
        keys=["exact_match"],
        description="Share of captions equal to a reference",
    )


@hookimpl
def register_datasets(register):
    register(
        "colour-swatches",
        ColourSwatches,
        splits=["train", "val", "test"],
        description="Noisy one-colour swatches with captions",
    )


@hookimpl
def register_explainers(register):
    register(
        "quadrants", Quadrants, modalities=["image"], description="Score drop when each quarter of the image is hidden"
    )
