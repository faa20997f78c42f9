"""The built-in ``shapes`` dataset: procedurally drawn shapes with paraphrased captions.

Each image shows one shape (with a size and a position) or two shapes side by side. Five captions
per image paraphrase the same facts. Each image also keeps hard-negative captions that swap colours,
shapes or left and right (with the canonical true caption they are written against), for
compositional probes, and questions with answers about colour, shape, count, size and position.
``objects`` says where each object is (centre and radius as fractions of the side). Everything is
deterministic in ``seed`` and is written once as PNG files plus a JSONL manifest, then read through
the same loader as user data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from itm_core import hookimpl
from itm_core.components import Dataset
from itm_core.data import ImageTextSet, load_manifest
from itm_core.errors import ParamsError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES = {"small": 0.10, "medium": 0.15, "large": 0.21}  # radius as a fraction of the image side
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "center": (0.5, 0.5)}
POSITION_PHRASES = {
    "left": ("on the left", "at the left side"),
    "right": ("on the right", "at the right side"),
    "top": ("at the top", "near the top edge"),
    "bottom": ("at the bottom", "near the bottom edge"),
    "center": ("in the center", "in the middle"),
}
SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium", "medium-sized"), "large": ("large", "big")}
FLIP = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "center"}
HARD_NEGATIVE_COLUMNS = ("neg_color", "neg_shape", "neg_position")
PROBE_TRUE_COLUMN = "probe_true"  # the canonical caption the hard negatives are written against
QA_COLUMN = "qa"  # a list of {"question", "answer", "type"} per image
QUESTION_TYPES = ("colour", "shape", "count", "size", "position")
COUNT_WORDS = {1: "one", 2: "two"}
FORMAT = 3  # bump when the files written for the same options change


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str

    def words(self, rng: random.Random | None = None) -> str:
        size = rng.choice(SIZE_WORDS[self.size]) if rng else self.size
        return f"{size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """One object at ``position``, or two objects (``objects[0]`` left of ``objects[1]``)."""

    objects: tuple[Obj, ...]
    position: str | None = None

    @property
    def place(self) -> str:
        """Where the one object of a single-object scene is."""
        if self.position is None:
            raise ValueError("a scene of two objects has no single position")
        return self.position


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(scene: Scene, rng: random.Random) -> str:
    """One caption for ``scene``, its wording picked by ``rng``."""
    if len(scene.objects) == 1:
        o, pos = scene.objects[0], rng.choice(POSITION_PHRASES[scene.place])
        templates: tuple[str, ...] = (
            f"{_article(o.words(rng))} {pos}",
            f"{pos}, there is {_article(o.words(rng))}",
            f"{_article(o.color + ' ' + o.shape)} of {o.size} size {pos}",
            f"there is {_article(rng.choice(SIZE_WORDS[o.size]) + ' ' + o.shape)} colored {o.color} {pos}",
            f"a picture of {_article(o.words(rng))} placed {pos}",
        )
    else:
        a, b = (_article(x.words(rng)) for x in scene.objects)
        templates = (
            f"{a} to the left of {b}",
            f"{b} to the right of {a}",
            f"{a} on the left and {b} on the right",
            f"on the right {b}, on the left {a}",
            f"two shapes: {a} and, to its right, {b}",
            f"{a} next to {b} on its right",
        )
    return rng.choice(templates)


def paraphrases(say: Callable[[random.Random], str], n: int, rng: random.Random) -> list[str]:
    """``n`` distinct outputs of ``say`` where its templates allow, else repeats."""
    out: list[str] = []
    for _ in range(n * 20):
        c = say(rng)
        if c not in out:
            out.append(c)
        if len(out) == n:
            break
    while len(out) < n:
        out.append(say(rng))
    return out


def captions(scene: Scene, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct paraphrases of ``scene`` where the templates allow, else repeats."""
    return paraphrases(lambda r: describe(scene, r), n, rng)


def canonical(scene: Scene) -> str:
    """The plain caption used for hard negatives: one fixed wording per scene."""
    if len(scene.objects) == 1:
        o = scene.objects[0]
        return f"{_article(o.words())} {POSITION_PHRASES[scene.place][0]}"
    a, b = (_article(x.words()) for x in scene.objects)
    return f"{a} to the left of {b}"


def hard_negatives(scene: Scene, rng: random.Random) -> dict[str, str]:
    """Captions that differ from the truth in exactly one compositional way."""
    if len(scene.objects) == 2:
        a, b = scene.objects
        if a.color == b.color:
            b = Obj(b.shape, rng.choice([c for c in COLORS if c != a.color]), b.size)
        if a.shape == b.shape:
            b = Obj(rng.choice([s for s in SHAPES if s != a.shape]), b.color, b.size)
        swapped_color = Scene((Obj(a.shape, b.color, a.size), Obj(b.shape, a.color, b.size)))
        swapped_shape = Scene((Obj(b.shape, a.color, a.size), Obj(a.shape, b.color, b.size)))
        swapped_side = Scene((b, a))
        return {
            "neg_color": canonical(swapped_color),
            "neg_shape": canonical(swapped_shape),
            "neg_position": canonical(swapped_side),
        }
    o = scene.objects[0]
    other_color = Obj(o.shape, rng.choice([c for c in COLORS if c != o.color]), o.size)
    other_shape = Obj(rng.choice([s for s in SHAPES if s != o.shape]), o.color, o.size)
    position = FLIP[scene.place] if scene.place != "center" else rng.choice(["left", "right", "top", "bottom"])
    return {
        "neg_color": canonical(Scene((other_color,), scene.position)),
        "neg_shape": canonical(Scene((other_shape,), scene.position)),
        "neg_position": canonical(Scene((o,), position)),
    }


_SIZE_WORD = {w: size for size, words in SIZE_WORDS.items() for w in words}
_SIZE_RE = "|".join(sorted(map(re.escape, _SIZE_WORD), key=len, reverse=True))
_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
# The three ways the templates name an object, tried in this order at each place in the text.
_MENTIONS = (
    re.compile(rf"\b(?P<color>{_COLOR_RE}) (?P<shape>{_SHAPE_RE}) of (?P<size>{_SIZE_RE}) size\b"),
    re.compile(rf"\b(?P<size>{_SIZE_RE}) (?P<shape>{_SHAPE_RE}) colored (?P<color>{_COLOR_RE})\b"),
    re.compile(rf"\b(?:(?P<size>{_SIZE_RE}) )?(?P<color>{_COLOR_RE}) (?P<shape>{_SHAPE_RE})\b"),
)
_PLACE = {phrase: place for place, phrases in POSITION_PHRASES.items() for phrase in phrases}


def _mentions(text: str) -> list[tuple[int, Obj]]:
    found: list[tuple[int, int, Obj]] = []
    for pattern in _MENTIONS:
        for m in pattern.finditer(text):
            if any(s < m.end() and m.start() < e for s, e, _ in found):
                continue
            size = _SIZE_WORD[m["size"]] if m["size"] else "medium"
            found.append((m.start(), m.end(), Obj(m["shape"], m["color"], size)))
    return [(s, o) for s, _, o in sorted(found, key=lambda f: f[0])]


def parse(text: str) -> Scene | None:
    """The scene a ``shapes`` caption describes (any of its templates, or a prompt in the same words),
    or ``None`` when the text names no object, more than two, or a single object without a place.
    An object named without a size word is read as medium."""
    text = " ".join(text.lower().split())
    objects = [o for _, o in _mentions(text)]
    if len(objects) == 1:
        places = [place for phrase, place in _PLACE.items() if phrase in text]
        return Scene((objects[0],), places[0]) if len(set(places)) == 1 else None
    if len(objects) != 2:
        return None
    right_first = " to the right of " in text or text.startswith("on the right ")
    return Scene(tuple(reversed(objects)) if right_first else tuple(objects))


def questions(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """One question of each type about ``scene``, answered from a fixed answer set."""
    objs = scene.objects
    qa = [
        {
            "question": rng.choice(["how many shapes are there?", "how many objects are in the picture?"]),
            "answer": COUNT_WORDS[len(objs)],
            "type": "count",
        }
    ]
    if len(objs) == 1:
        o = objs[0]
        qa += [
            {"question": f"what colour is the {o.shape}?", "answer": o.color, "type": "colour"},
            {"question": f"what shape is the {o.color} object?", "answer": o.shape, "type": "shape"},
            {"question": f"what size is the {o.shape}?", "answer": o.size, "type": "size"},
            {"question": f"where is the {o.color} {o.shape}?", "answer": scene.place, "type": "position"},
        ]
        return qa
    side = rng.randrange(2)
    o, other = objs[side], objs[1 - side]
    where = ("left", "right")[side]
    qa += [
        {"question": f"what colour is the shape on the {where}?", "answer": o.color, "type": "colour"},
        {"question": f"what shape is on the {where}?", "answer": o.shape, "type": "shape"},
        {"question": f"what size is the shape on the {where}?", "answer": o.size, "type": "size"},
    ]
    if (o.color, o.shape) != (other.color, other.shape):
        qa.append(
            {
                "question": f"is the {o.color} {o.shape} on the left or on the right?",
                "answer": where,
                "type": "position",
            }
        )
    return qa


def random_scene(rng: random.Random, two_object_fraction: float) -> Scene:
    def obj() -> Obj:
        return Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)))

    if rng.random() < two_object_fraction:
        a, b = obj(), obj()
        while (a.shape, a.color) == (b.shape, b.color):
            b = obj()
        return Scene((a, b))
    return Scene((obj(),), rng.choice(list(POSITIONS)))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        return [
            (
                cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5),
            )
            for k in range(10)
        ]
    if shape == "cross":
        w = r * 0.35
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int, rng: random.Random, placed: list[dict[str, Any]] | None = None) -> Any:
    """Draw ``scene`` on a grey background with a little jitter in place, shade and noise; where each
    object landed (centre and radius as fractions of the side) is appended to ``placed`` when given."""
    from PIL import Image, ImageDraw

    shade = rng.randint(110, 150)
    img = Image.new("RGB", (size, size), (shade, shade, shade))
    draw = ImageDraw.Draw(img)
    centres = [POSITIONS[scene.place]] if len(scene.objects) == 1 else [(0.27, 0.5), (0.73, 0.5)]
    for o, (fx, fy) in zip(scene.objects, centres):
        r = SIZES[o.size] * size
        cx = fx * size + rng.uniform(-0.04, 0.04) * size
        cy = fy * size + rng.uniform(-0.04, 0.04) * size
        fill = COLORS[o.color]
        if placed is not None:
            placed.append({**asdict(o), "cx": round(cx / size, 4), "cy": round(cy / size, 4), "r": round(r / size, 4)})
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=fill)
    return img


def build(
    folder: Path,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    image_size: int,
    captions_per_image: int,
    two_object_fraction: float,
) -> Path:
    """Write the images and ``manifest.jsonl`` into ``folder`` (once); return the manifest path."""
    from tqdm.auto import tqdm

    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    total = n_train + n_val + n_test
    with tqdm(total=total, desc="building shapes", unit="image", leave=False, disable=None) as bar:
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            rng = random.Random(f"shapes:{seed}:{split}")
            (folder / split).mkdir(exist_ok=True)
            for i in range(n):
                scene = random_scene(rng, two_object_fraction)
                rel = f"{split}/{i:05d}.png"
                placed: list[dict[str, Any]] = []
                render(scene, image_size, rng, placed).save(folder / rel)
                rows.append(
                    {
                        "image": rel,
                        "caption": captions(scene, captions_per_image, rng),
                        "split": split,
                        **hard_negatives(scene, rng),
                        PROBE_TRUE_COLUMN: canonical(scene),
                        QA_COLUMN: questions(scene, rng),
                        "objects": placed,
                        "position": scene.position or "left-right",
                    }
                )
                bar.update()
    return write_manifest(folder, rows)


def write_manifest(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """``folder/manifest.jsonl`` written whole or not at all (a temporary file, then a rename)."""
    manifest = folder / "manifest.jsonl"
    tmp = folder / ".manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(manifest)
    return manifest


def data_folder(prefix: str, params: dict[str, Any], fmt: int, root: str | None) -> Path:
    """Where a procedural dataset with these options is written: ``<root or $ITM_HOME/data>/<prefix>-<hash>``."""
    key = hashlib.sha256(json.dumps({**params, "format": fmt}, sort_keys=True).encode()).hexdigest()[:12]
    base = Path(root) if root else Path(os.environ.get("ITM_HOME", ".itm")) / "data"
    return base / f"{prefix}-{key}"


class ShapesDataset(Dataset):
    def __init__(
        self,
        n_train: int = 2000,
        n_val: int = 500,
        n_test: int = 500,
        seed: int = 0,
        image_size: int = 128,
        captions_per_image: int = 5,
        two_object_fraction: float = 0.6,
        root: str | None = None,
    ) -> None:
        for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if value < 1:
                raise ValueError(f"shapes: {name} must be at least 1, got {value}")
        if not 32 <= image_size <= 1024:
            raise ValueError(f"shapes: image_size must be between 32 and 1024, got {image_size}")
        if captions_per_image < 1:
            raise ValueError(f"shapes: captions_per_image must be at least 1, got {captions_per_image}")
        self.params: dict[str, Any] = dict(
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            seed=seed,
            image_size=image_size,
            captions_per_image=captions_per_image,
            two_object_fraction=two_object_fraction,
        )
        self.folder = data_folder("shapes", self.params, FORMAT, root)

    def load(self) -> ImageTextSet:
        manifest = build(self.folder, **self.params)
        extras = (*HARD_NEGATIVE_COLUMNS, PROBE_TRUE_COLUMN, QA_COLUMN, "objects", "position")
        return load_manifest(manifest, extra_columns=extras, name="shapes")


DEFAULTS_VARIABLE = "ITM_SHAPES_DEFAULTS"


def environment_defaults(variable: str = DEFAULTS_VARIABLE, dataset: type[Dataset] = ShapesDataset) -> dict[str, Any]:
    """Options of ``dataset`` (``shapes`` by default) from the environment variable ``variable`` (a
    JSON object): they replace the built-in defaults, and options given explicitly still win. A
    quick way to try every command on small data."""
    import inspect

    name = variable.removeprefix("ITM_").removesuffix("_DEFAULTS").lower()
    text = os.environ.get(variable, "").strip()
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamsError(
            f"{variable} is not valid JSON ({exc}); give an object such as "
            f'\'{{"n_train": 200, "n_val": 50, "n_test": 50}}\''
        ) from None
    known = [p for p in inspect.signature(dataset).parameters]
    if not isinstance(values, dict) or set(values) - set(known):
        extra = sorted(set(values) - set(known)) if isinstance(values, dict) else values
        raise ParamsError(f"{variable}: expected a JSON object of {name} options ({', '.join(known)}), got {extra!r}")
    return values


def shapes(**options: Any) -> ShapesDataset:
    return ShapesDataset(**{**environment_defaults(), **options})


@hookimpl
def register_datasets(register):
    register(
        "shapes",
        shapes,
        description="Procedural shapes with 5 paraphrased captions and hard negatives; built offline, cached",
        splits=["train", "val", "test"],
    )
