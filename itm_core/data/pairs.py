"""The in-memory form of an image-text dataset: images, captions, which caption describes which image."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from itm_core.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class ImageTextSet:
    """Images (paths relative to ``root``) with one or more captions each, and a split per image.

    ``caption_image[j]`` is the index of the image that caption ``j`` describes.
    ``image_extras`` holds optional per-image lists (for example hard-negative captions).
    """

    root: Path
    images: list[str]
    captions: list[str]
    caption_image: list[int]
    image_split: list[str]
    name: str = "dataset"
    image_extras: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if len(self.image_split) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.image_split)} split labels")
        if len(self.caption_image) != len(self.captions):
            raise DataError(f"{self.name}: {len(self.captions)} captions but {len(self.caption_image)} image links")
        for key, values in self.image_extras.items():
            if len(values) != len(self.images):
                raise DataError(
                    f"{self.name}: extra column {key!r} has {len(values)} values for {len(self.images)} images"
                )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def splits(self) -> list[str]:
        return sorted(set(self.image_split))

    def image_path(self, i: int) -> Path:
        return self.root / self.images[i]

    def image_paths(self) -> list[Path]:
        return [self.root / p for p in self.images]

    def captions_of(self, i: int) -> list[str]:
        return [c for c, k in zip(self.captions, self.caption_image) if k == i]

    def captions_by_image(self) -> list[list[str]]:
        """Every image's captions, in one pass (``captions_of`` for each image would read all captions per image)."""
        out: list[list[str]] = [[] for _ in self.images]
        for caption, k in zip(self.captions, self.caption_image):
            out[k].append(caption)
        return out

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageTextSet:
        """The images at ``indices`` (in that order) with their captions and extras."""
        position = {old: new for new, old in enumerate(indices)}
        caps = [(c, position[k]) for c, k in zip(self.captions, self.caption_image) if k in position]
        caps.sort(key=lambda ck: ck[1])
        return replace(
            self,
            images=[self.images[i] for i in indices],
            captions=[c for c, _ in caps],
            caption_image=[k for _, k in caps],
            image_split=[self.image_split[i] for i in indices],
            image_extras={key: [v[i] for i in indices] for key, v in self.image_extras.items()},
            name=name or self.name,
        )

    def split(self, name: str) -> ImageTextSet:
        """The images of one split; an unknown split fails with the splits this dataset has."""
        indices = [i for i, s in enumerate(self.image_split) if s == name]
        if not indices:
            raise DataError(
                f"{self.name} has no images in split {name!r}; its splits are: {', '.join(self.splits)}. To split its "
                "images afresh, give the dataset the option split_ratios: [train, val, test] (e.g. [0.8, 0.1, 0.1]) "
                "and a seed"
            )
        return self.subset(indices, name=f"{self.name}:{name}")

    def head(self, n: int) -> ImageTextSet:
        """The first ``n`` images (all when ``n`` is 0 or larger than the set)."""
        return self if n <= 0 or n >= len(self) else self.subset(range(n))

    def fingerprint(self) -> str:
        """A short hash of the paths, captions and links: two sets with equal fingerprints hold the same pairs."""
        h = hashlib.sha256()
        h.update(json.dumps([str(self.root.resolve()), self.images, self.captions, self.caption_image]).encode())
        return h.hexdigest()[:16]

    def splits_fingerprint(self) -> str:
        """A short hash of which split each image is in: with equal :meth:`fingerprint`, equal split
        fingerprints mean the same train, val and test images."""
        return hashlib.sha256(json.dumps(self.image_split).encode()).hexdigest()[:16]


def captions_per_image(caption_image: Sequence[int] | Any, n_images: int) -> list[list[int]]:
    """For each of ``n_images`` images, the indices of its captions (``caption_image`` gives each
    caption's image: a sequence or a tensor)."""
    lists: list[list[int]] = [[] for _ in range(n_images)]
    owners = caption_image.tolist() if hasattr(caption_image, "tolist") else caption_image
    for j, i in enumerate(owners):
        lists[i].append(j)
    return lists
