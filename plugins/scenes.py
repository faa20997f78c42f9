"""The built-in ``scenes`` dataset: a harder benchmark, where matching needs composition.

Each image holds one to four objects (shape, colour, size) in the cells of a 3 x 3 layout, sometimes
overlapping, on a textured, noisy background, with colour and lighting jitter and a colour cast (the
white balance off by up to ``cast`` in each channel), and optionally ``clutter`` (scribbles in the
objects' colours). Captions mention every object and the relation of each object to the next (left
of, right of, above, below, bigger than, smaller than), in five paraphrases. Images come in families
that share their words: a scene, the same scene with two objects' colours swapped, mirrored, or with
two shapes swapped. A bag of single words cannot tell a family's captions apart and a global colour
histogram cannot tell its images apart, so a model must bind attributes to objects and read
relations to match them.

Like ``shapes``, each image keeps hard-negative captions against its canonical caption (an attribute
binding swap of colours, of shapes, and a relation swap), questions with answers, and where each
object is (``objects``: centre and radius as fractions of the side), for the probe, VQA and the
explanation benchmark. Everything is deterministic in ``seed`` and written once.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from itm_core import hookimpl
from itm_core.components import Dataset
from itm_core.data import ImageTextSet, load_manifest
from plugins.scene_specs import (
    COUNT_WORDS,
    INVERSE,
    MIRROR,
    RELATION_PHRASES,
    SINGLE_CELLS,
    TEXTURES,
    SceneSpec,
    random_spec,
)
from plugins.shapes import (
    COLORS,
    HARD_NEGATIVE_COLUMNS,
    POSITION_PHRASES,
    PROBE_TRUE_COLUMN,
    QA_COLUMN,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    Obj,
    _article,
    _polygon,
    data_folder,
    environment_defaults,
    paraphrases,
    write_manifest,
)

FORMAT = 1  # bump when the files written for the same options change


def _words(o: Obj, rng: random.Random | None) -> str:
    size = rng.choice(SIZE_WORDS[o.size]) if rng else o.size
    return f"{size} {o.color} {o.shape}"


def describe(spec: SceneSpec, rng: random.Random | None) -> str:
    """A caption naming every object and relation; ``rng`` None gives the canonical wording."""
    pick = (lambda options: options[0]) if rng is None else rng.choice
    if len(spec.objects) == 1:
        o = spec.objects[0].obj
        where = pick(POSITION_PHRASES[spec.place])
        return pick(
            [
                f"{_article(_words(o, rng))} {where}",
                f"{where}, there is {_article(_words(o, rng))}",
                f"a picture of {_article(_words(o, rng))} placed {where}",
            ]
        )
    objs, rels = [p.obj for p in spec.objects], list(spec.relations)
    style = 0 if rng is None else rng.randrange(4)
    if style in (1, 3):  # mentioned from the last object back, with the relations inverted
        objs, rels = objs[::-1], [INVERSE[r] for r in rels[::-1]]
    if style in (0, 1):
        text = _article(_words(objs[0], rng))
        for n, (r, o) in enumerate(zip(rels, objs[1:])):
            text += f"{', which is' if n else ''} {pick(RELATION_PHRASES[r])} {_article(_words(o, rng))}"
        return text if rng is None or rng.random() < 0.5 else f"there is {text}"
    clauses = [
        f"{_article(_words(objs[0], rng))} is {pick(RELATION_PHRASES[rels[0]])} {_article(_words(objs[1], rng))}"
    ]
    for r, a, b in zip(rels[1:], objs[1:], objs[2:]):
        clauses.append(f"the {a.color} {a.shape} is {pick(RELATION_PHRASES[r])} {_article(_words(b, rng))}")
    return "; ".join(clauses) if style == 2 else ", and ".join(clauses)


def captions(spec: SceneSpec, n: int, rng: random.Random) -> list[str]:
    return paraphrases(lambda r: describe(spec, r), n, rng)


def _with_objects(spec: SceneSpec, objects: list[Obj]) -> SceneSpec:
    return replace(spec, objects=tuple(replace(p, obj=o) for p, o in zip(spec.objects, objects)))


def _distinct(objects: list[Obj]) -> bool:
    return len({(o.shape, o.color) for o in objects}) == len(objects)


def swap_attribute(spec: SceneSpec, attribute: str, rng: random.Random) -> SceneSpec | None:
    """Two objects exchange their ``color`` or ``shape`` (an attribute binding swap); None when no
    pair differs in it without making two objects alike."""
    objs = [p.obj for p in spec.objects]
    pairs = [
        (i, j)
        for i in range(len(objs))
        for j in range(i + 1, len(objs))
        if getattr(objs[i], attribute) != getattr(objs[j], attribute)
    ]
    rng.shuffle(pairs)
    for i, j in pairs:
        swapped = objs[:]
        swapped[i] = replace(objs[i], **{attribute: getattr(objs[j], attribute)})
        swapped[j] = replace(objs[j], **{attribute: getattr(objs[i], attribute)})
        if _distinct(swapped):
            return _with_objects(spec, swapped)
    return None


def mirror(spec: SceneSpec) -> SceneSpec | None:
    """The scene mirrored left to right (None when that changes nothing a caption says)."""
    if len(spec.objects) == 1:
        if spec.position not in ("left", "right"):
            return None
        position = MIRROR[spec.position]
        col, row = SINGLE_CELLS[position]
        return replace(spec, objects=(replace(spec.objects[0], col=col, row=row),), position=position)
    if not any(r in MIRROR for r in spec.relations):
        return None
    return SceneSpec(
        tuple(replace(p, col=2 - p.col) for p in spec.objects), tuple(MIRROR.get(r, r) for r in spec.relations)
    )


def hard_negatives(spec: SceneSpec, rng: random.Random) -> dict[str, str]:
    """Captions in the canonical wording that are false in exactly one way: two objects' colours
    swapped (or, with one colour, another colour), two shapes swapped (or another shape), and one
    relation reversed (or, for one object, the opposite place)."""
    out = {}
    for column, attribute, pool in (("neg_color", "color", list(COLORS)), ("neg_shape", "shape", list(SHAPES))):
        swapped = swap_attribute(spec, attribute, rng)
        if swapped is None:  # one object, or all alike in this attribute: change one object's value
            objs = [p.obj for p in spec.objects]
            for i in rng.sample(range(len(objs)), len(objs)):
                for value in rng.sample([v for v in pool if v != getattr(objs[i], attribute)], len(pool) - 1):
                    changed = objs[:]
                    changed[i] = replace(objs[i], **{attribute: value})
                    if _distinct(changed):
                        swapped = _with_objects(spec, changed)
                        break
                if swapped is not None:
                    break
        assert swapped is not None  # some object can always take another colour or shape
        out[column] = describe(swapped, None)
    if len(spec.objects) == 1:
        flip = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
        position = flip.get(spec.place) or rng.choice(list(flip))
        out["neg_position"] = describe(replace(spec, position=position), None)
    else:
        k = rng.randrange(len(spec.relations))
        relations = list(spec.relations)
        relations[k] = INVERSE[relations[k]]
        out["neg_position"] = describe(replace(spec, relations=tuple(relations)), None)
    return out


def questions(spec: SceneSpec, rng: random.Random) -> list[dict[str, str]]:
    objs = [p.obj for p in spec.objects]
    qa = [
        {
            "question": rng.choice(["how many shapes are there?", "how many objects are in the picture?"]),
            "answer": COUNT_WORDS[len(objs)],
            "type": "count",
        }
    ]
    o = rng.choice(objs)
    if sum(x.shape == o.shape for x in objs) == 1:
        qa.append({"question": f"what colour is the {o.shape}?", "answer": o.color, "type": "colour"})
    if sum(x.color == o.color for x in objs) == 1:
        qa.append({"question": f"what shape is the {o.color} object?", "answer": o.shape, "type": "shape"})
    qa.append({"question": f"what size is the {o.color} {o.shape}?", "answer": o.size, "type": "size"})
    if len(objs) == 1:
        qa.append({"question": f"where is the {o.color} {o.shape}?", "answer": spec.place, "type": "position"})
    else:
        k = rng.randrange(len(spec.relations))
        a, b = spec.objects[k], spec.objects[k + 1]
        if a.col != b.col:
            qa.append(
                {
                    "question": f"is the {a.obj.color} {a.obj.shape} left or right of the {b.obj.color} {b.obj.shape}?",
                    "answer": "left" if a.col < b.col else "right",
                    "type": "position",
                }
            )
        elif a.row != b.row:
            qa.append(
                {
                    "question": f"is the {a.obj.color} {a.obj.shape} above or below the {b.obj.color} {b.obj.shape}?",
                    "answer": "above" if a.row < b.row else "below",
                    "type": "position",
                }
            )
    return qa


def _background(size: int, rng: random.Random, textured: bool) -> Any:
    import numpy as np

    g = np.random.default_rng(rng.randrange(2**32))
    base = np.array([rng.randint(95, 165)] * 3, dtype=np.float32) + g.uniform(-18, 18, 3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    kind = rng.choice(TEXTURES) if textured else "plain"
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.2)
        img += 14 * np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))[..., None]
    elif kind == "checker":
        cells = rng.randint(4, 10)
        img += 12 * (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 * 2 - 1)[..., None]
    elif kind == "gradient":
        img += (30 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)))[..., None]
    elif kind == "blotches":
        small = g.normal(0, 18, (6, 6, 3)).astype(np.float32)
        img += np.kron(small, np.ones((size // 6 + 1, size // 6 + 1, 1)))[:size, :size]
    return img


def _paint(rgb: tuple[int, int, int], rng: random.Random, jitter: bool = True) -> tuple[int, ...]:
    """``rgb`` with each channel moved by up to 25 levels when ``jitter``."""
    return tuple(int(min(255, max(0, c + (rng.randint(-25, 25) if jitter else 0)))) for c in rgb)


def _clutter(draw: Any, size: int, rng: random.Random, strokes: int) -> None:
    """``strokes`` thin scribbles in the objects' palette: colour in the image that no caption names."""
    width = max(1, round(size / 64))
    for _ in range(strokes):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        points = [(x, y)]
        for _ in range(rng.randint(2, 4)):
            x = min(size, max(0.0, x + rng.uniform(-0.25, 0.25) * size))
            y = min(size, max(0.0, y + rng.uniform(-0.25, 0.25) * size))
            points.append((x, y))
        draw.line(points, fill=_paint(COLORS[rng.choice(list(COLORS))], rng), width=width)


def render(
    spec: SceneSpec,
    size: int,
    rng: random.Random,
    textured: bool = True,
    jitter: bool = True,
    clutter: int = 0,
    cast: float = 0.0,
) -> tuple[Any, list[dict[str, float]]]:
    """The image and where each object is (centre and radius as fractions of the side)."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.fromarray(_background(size, rng, textured).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    _clutter(draw, size, rng, clutter)
    placed: list[dict[str, Any]] = []
    for p in spec.objects:
        r = SIZES[p.obj.size] * 0.8
        cx = (0.2 + 0.3 * p.col) + rng.uniform(-0.05, 0.05)
        cy = (0.2 + 0.3 * p.row) + rng.uniform(-0.05, 0.05)
        placed.append(
            {
                "shape": p.obj.shape,
                "color": p.obj.color,
                "size": p.obj.size,
                "cx": round(cx, 4),
                "cy": round(cy, 4),
                "r": round(r, 4),
            }
        )
    for p, where in sorted(
        zip(spec.objects, placed), key=lambda _: rng.random()
    ):  # a random drawing order: either may cover the other
        fill = _paint(COLORS[p.obj.color], rng, jitter)
        cx, cy, r = where["cx"] * size, where["cy"] * size, where["r"] * size
        if p.obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(p.obj.shape, cx, cy, r), fill=fill)
    if jitter:
        g = np.random.default_rng(rng.randrange(2**32))
        arr = np.asarray(img, dtype=np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        light = rng.uniform(0.8, 1.1) + rng.uniform(-0.15, 0.15) * (xx - 0.5) + rng.uniform(-0.15, 0.15) * (yy - 0.5)
        arr = arr * light[..., None] + g.normal(0, 6, arr.shape)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    if cast:  # white balance: each channel's gain drawn apart, the whole image tinted
        gains = np.array([rng.uniform(1 - cast, 1 + cast) for _ in range(3)], dtype=np.float32)
        img = Image.fromarray((np.asarray(img, dtype=np.float32) * gains).clip(0, 255).astype(np.uint8))
    return img, placed


def family(spec: SceneSpec, size: int, rng: random.Random) -> list[SceneSpec]:
    """``spec`` and up to ``size - 1`` variants with the same words: colours swapped, mirrored, shapes swapped."""
    variants = [
        v
        for v in (swap_attribute(spec, "color", rng), mirror(spec), swap_attribute(spec, "shape", rng))
        if v is not None
    ]
    rng.shuffle(variants)
    return [spec, *variants[: size - 1]]


def build(
    folder: Path,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    image_size: int,
    captions_per_image: int,
    max_objects: int,
    family_size: int,
    textured: bool,
    jitter: bool,
    clutter: int = 0,
    cast: float = 0.0,
) -> Path:
    """Write the images and ``manifest.jsonl`` into ``folder`` (once); return the manifest path."""
    from tqdm.auto import tqdm

    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with tqdm(total=n_train + n_val + n_test, desc="building scenes", unit="image", leave=False, disable=None) as bar:
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            rng = random.Random(f"scenes:{seed}:{split}")
            (folder / split).mkdir(exist_ok=True)
            written, families = 0, 0
            while written < n:
                families += 1
                for spec in family(random_spec(rng, max_objects), family_size, rng):
                    if written == n:
                        break
                    rel = f"{split}/{written:05d}.png"
                    image, placed = render(spec, image_size, rng, textured, jitter, clutter, cast)
                    image.save(folder / rel)
                    rows.append(
                        {
                            "image": rel,
                            "caption": captions(spec, captions_per_image, rng),
                            "split": split,
                            **hard_negatives(spec, rng),
                            PROBE_TRUE_COLUMN: describe(spec, None),
                            QA_COLUMN: questions(spec, rng),
                            "objects": placed,
                            "position": spec.position or "relations",
                            "family": families,
                        }
                    )
                    written += 1
                    bar.update()
    return write_manifest(folder, rows)


class ScenesDataset(Dataset):
    def __init__(
        self,
        n_train: int = 2000,
        n_val: int = 500,
        n_test: int = 500,
        seed: int = 0,
        image_size: int = 128,
        captions_per_image: int = 5,
        max_objects: int = 4,
        family_size: int = 3,
        textured: bool = True,
        jitter: bool = True,
        clutter: int = 0,
        cast: float = 0.2,
        root: str | None = None,
    ) -> None:
        for name, value in (
            ("n_train", n_train),
            ("n_val", n_val),
            ("n_test", n_test),
            ("captions_per_image", captions_per_image),
        ):
            if value < 1:
                raise ValueError(f"scenes: {name} must be at least 1, got {value}")
        if not 64 <= image_size <= 1024:
            raise ValueError(f"scenes: image_size must be between 64 and 1024, got {image_size}")
        if not 1 <= max_objects <= 4:
            raise ValueError(f"scenes: max_objects must be between 1 and 4, got {max_objects}")
        if not 1 <= family_size <= 4:
            raise ValueError(f"scenes: family_size must be between 1 (no variants) and 4, got {family_size}")
        if not 0 <= clutter <= 64:
            raise ValueError(f"scenes: clutter must be between 0 (none) and 64 strokes, got {clutter}")
        if not 0 <= cast < 1:
            raise ValueError(f"scenes: cast must be at least 0 (none) and below 1, got {cast}")
        self.params: dict[str, Any] = dict(
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            seed=seed,
            image_size=image_size,
            captions_per_image=captions_per_image,
            max_objects=max_objects,
            family_size=family_size,
            textured=bool(textured),
            jitter=bool(jitter),
        )
        # only when set, so that the folders of existing options keep their names
        if clutter:
            self.params["clutter"] = int(clutter)
        if cast:
            self.params["cast"] = float(cast)
        self.folder = data_folder("scenes", self.params, FORMAT, root)

    def load(self) -> ImageTextSet:
        manifest = build(self.folder, **self.params)
        extras = (*HARD_NEGATIVE_COLUMNS, PROBE_TRUE_COLUMN, QA_COLUMN, "objects", "position")
        return load_manifest(manifest, extra_columns=extras, name="scenes")


DEFAULTS_VARIABLE = "ITM_SCENES_DEFAULTS"


def scenes(**options: Any) -> ScenesDataset:
    """``scenes`` with ``ITM_SCENES_DEFAULTS`` (a JSON object of options) over the built-in defaults."""
    return ScenesDataset(**{**environment_defaults(DEFAULTS_VARIABLE, ScenesDataset), **options})


@hookimpl
def register_datasets(register):
    register(
        "scenes",
        scenes,
        description="Harder procedural scenes: 1-4 objects with relations, textured backgrounds, a colour cast, "
        "families that share their words; built offline, cached",
        splits=["train", "val", "test"],
        check_options=lambda folder: {
            "n_train": 6,
            "n_val": 3,
            "n_test": 3,
            "image_size": 64,
            "root": str(folder / "scenes"),
        },
    )
