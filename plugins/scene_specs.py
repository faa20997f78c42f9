"""What a ``scenes`` scene is, before it is described or drawn: its objects, where they are, how they
relate, and how a random one is drawn."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from plugins.shapes import COLORS, SHAPES, SIZES, Obj

RELATION_PHRASES = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
    "bigger": ("bigger than", "larger than"),
    "smaller": ("smaller than", "tinier than"),
}
INVERSE = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "bigger": "smaller",
    "smaller": "bigger",
}
MIRROR = {"left": "right", "right": "left"}
SINGLE_CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "center": (1, 1)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
TEXTURES = ("plain", "stripes", "checker", "gradient", "blotches")


@dataclass(frozen=True)
class Placed:
    obj: Obj
    col: int
    row: int


@dataclass(frozen=True)
class SceneSpec:
    """Objects in the order captions mention them; ``relations[i]`` links object ``i`` to ``i + 1``.
    One object has a ``position`` in the image instead."""

    objects: tuple[Placed, ...]
    relations: tuple[str, ...] = ()
    position: str | None = None

    @property
    def place(self) -> str:
        """Where the one object of a single-object scene is."""
        if self.position is None:
            raise ValueError("a scene of several objects has no single position")
        return self.position


def true_relations(a: Placed, b: Placed) -> list[str]:
    out = []
    if a.col != b.col:
        out.append("left" if a.col < b.col else "right")
    if a.row != b.row:
        out.append("above" if a.row < b.row else "below")
    if SIZES[a.obj.size] != SIZES[b.obj.size]:
        out.append("bigger" if SIZES[a.obj.size] > SIZES[b.obj.size] else "smaller")
    return out


def random_spec(rng: random.Random, max_objects: int) -> SceneSpec:
    n = rng.choice(range(1, max_objects + 1))
    if n == 1:
        position = rng.choice(list(SINGLE_CELLS))
        col, row = SINGLE_CELLS[position]
        return SceneSpec(
            (Placed(Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))), col, row),),
            position=position,
        )
    cells = rng.sample([(c, r) for c in range(3) for r in range(3)], n)
    objects: list[Placed] = []
    while len(objects) < n:
        o = Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)))
        if all((o.shape, o.color) != (p.obj.shape, p.obj.color) for p in objects):  # "the blue square" names one object
            objects.append(Placed(o, *cells[len(objects)]))
    relations = []
    for a, b in itertools.pairwise(objects):
        options = true_relations(a, b)
        spatial = [r for r in options if r not in ("bigger", "smaller")]
        relations.append(rng.choice(options) if not spatial or rng.random() < 0.25 else rng.choice(spatial))
    return SceneSpec(tuple(objects), tuple(relations))
