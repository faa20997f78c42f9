"""``attribute_accuracy``: does a generated image show what its ``shapes`` prompt says?

As GenEval and T2I-CompBench check each attribute of a generated image with a detector, an
*attribute reader* (a small CNN trained on real ``shapes`` images, then cached) reads each image:
how many objects, where a single object is, and the colour, shape and size of each object (the left
one first when there are two). Each prompt is parsed into the scene it describes
(:func:`plugins.shapes.parse`) and compared:

- ``attr_count``: the number of objects;
- ``attr_color``, ``attr_shape``, ``attr_size``: the prompt's colours (shapes, sizes) are the ones read,
  in any order;
- ``attr_position``: a single object in the named place (left, right, top, bottom, centre); two objects
  on the named sides (the reading matches the prompt's objects better left-to-right than swapped);
- ``attr_all``: every attribute of every object right, on its side, and the count.

``reader_*`` are the same scores for real test images against their own first captions, at the
same resolution: the ceiling of each score, and a reader that cannot read shows there. Prompts the
parser cannot read (another vocabulary, another script) are left out and counted in ``attr_unread``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itm_core import hookimpl
from itm_core.components import Metric
from itm_core.errors import DataError
from plugins import shapes as S

COLOR_NAMES = list(S.COLORS)
SIZE_NAMES = list(S.SIZES)
PLACES = list(S.POSITIONS)
HEADS = {
    "count": 2,
    "place": len(PLACES),
    **{
        f"{slot}_{a}": n
        for slot in "ab"
        for a, n in (("color", len(COLOR_NAMES)), ("shape", len(S.SHAPES)), ("size", len(SIZE_NAMES)))
    },
}
ATTRIBUTES = ("count", "color", "shape", "size", "position", "all")
FORMAT = 1  # bump when the reader's architecture or training changes


def scene_labels(scene: S.Scene) -> dict[str, int]:
    """Class indices per head; ``-1`` where a head does not apply (the second slot of one object)."""
    objs = scene.objects
    labels = {"count": len(objs) - 1, "place": PLACES.index(scene.place) if len(objs) == 1 else -1}
    for slot, o in zip("ab", (objs[0], objs[1] if len(objs) > 1 else None)):
        labels[f"{slot}_color"] = COLOR_NAMES.index(o.color) if o else -1
        labels[f"{slot}_shape"] = S.SHAPES.index(o.shape) if o else -1
        labels[f"{slot}_size"] = SIZE_NAMES.index(o.size) if o else -1
    return labels


def manifest_scene(objects: list[dict[str, Any]], position: str) -> S.Scene:
    """The scene of a ``shapes`` manifest row from its ``objects`` and ``position`` columns."""
    objs = tuple(S.Obj(o["shape"], o["color"], o["size"]) for o in sorted(objects, key=lambda o: o["cx"]))
    return S.Scene(objs, position if len(objs) == 1 else None)


def _reader_net(resolution: int) -> Any:
    import torch
    from torch import nn

    class Reader(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def block(i: int, o: int) -> list[nn.Module]:
                return [
                    nn.Conv2d(i, o, 3, padding=1),
                    nn.BatchNorm2d(o),
                    nn.ReLU(),
                    nn.Conv2d(o, o, 3, padding=1),
                    nn.BatchNorm2d(o),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                ]

            self.body = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.Flatten())
            side = resolution // 8
            self.trunk = nn.Sequential(nn.Linear(128 * side * side, 256), nn.ReLU(), nn.Dropout(0.2))
            self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in HEADS.items()})

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.trunk(self.body(x))
            return {k: head(h) for k, head in self.heads.items()}

    return Reader()


@dataclass
class Reading:
    """What the reader saw in one image."""

    count: int
    place: str
    objects: tuple[S.Obj, S.Obj]


def judge(prompt: S.Scene, seen: Reading) -> dict[str, bool]:
    """Each attribute of ``prompt`` right or wrong in ``seen``."""
    want = prompt.objects
    got = seen.objects[: len(want)]
    out = {"count": seen.count == len(want)}
    for attr in ("color", "shape", "size"):
        out[attr] = sorted(getattr(o, attr) for o in got) == sorted(getattr(o, attr) for o in want)
    if len(want) == 1:
        out["position"] = seen.place == prompt.position
    else:

        def agree(a: S.Obj, b: S.Obj) -> int:
            return int(a.color == b.color) + int(a.shape == b.shape)

        kept = agree(got[0], want[0]) + agree(got[1], want[1])
        swapped = agree(got[0], want[1]) + agree(got[1], want[0])
        out["position"] = kept > swapped
    out["all"] = out["count"] and out["position"] and all(g == w for g, w in zip(got, want))
    return out


class AttributeReader:
    """The trained reader: PIL images in, :class:`Reading` out."""

    def __init__(self, net: Any, resolution: int, real_scores: dict[str, float] | None = None) -> None:
        self.net = net.eval()
        self.resolution = resolution
        self.real_scores = real_scores or {}

    def tensor(self, images: Sequence[Any]) -> Any:
        from itm_core.models.text_to_image import images_to_tensor

        return images_to_tensor(list(images), self.resolution)

    def read_tensor(self, x: Any, batch_size: int = 256) -> list[Reading]:
        import torch

        out: list[Reading] = []
        with torch.inference_mode():
            for s in range(0, len(x), batch_size):
                logits = {k: v.argmax(1).tolist() for k, v in self.net(x[s : s + batch_size]).items()}
                for i in range(len(logits["count"])):
                    a, b = (
                        S.Obj(
                            S.SHAPES[logits[f"{slot}_shape"][i]],
                            COLOR_NAMES[logits[f"{slot}_color"][i]],
                            SIZE_NAMES[logits[f"{slot}_size"][i]],
                        )
                        for slot in "ab"
                    )
                    out.append(Reading(logits["count"][i] + 1, PLACES[logits["place"][i]], (a, b)))
        return out

    def read(self, images: Sequence[Any]) -> list[Reading]:
        return self.read_tensor(self.tensor(images))

    def score(self, readings: Sequence[Reading], scenes: Sequence[S.Scene]) -> dict[str, float]:
        """Mean of each attribute over the pairs, as ``attr_<attribute>``."""
        verdicts = [judge(scene, seen) for scene, seen in zip(scenes, readings)]
        return {f"attr_{a}": float(np.mean([v[a] for v in verdicts])) if verdicts else 0.0 for a in ATTRIBUTES}


def _labels(scenes: Sequence[S.Scene]) -> dict[str, Any]:
    import torch

    rows = [scene_labels(s) for s in scenes]
    return {k: torch.tensor([r[k] for r in rows]) for k in HEADS}


def _scenes(data: Any) -> list[S.Scene]:
    objects, position = data.image_extras.get("objects"), data.image_extras.get("position")
    if objects is None or position is None:
        raise DataError(
            f"attribute_accuracy: dataset {data.name!r} has no 'objects' and 'position' columns; the reader trains on "
            "shapes"
        )
    return [manifest_scene(o, p) for o, p in zip(objects, position)]


def train_reader(dataset: Any, resolution: int, epochs: int = 30, seed: int = 0) -> AttributeReader:
    """Train on the dataset's train split (with light blur and noise, so smooth generated images read
    like real ones), pick the epoch by validation, score the test split as ``reader_*``."""
    import torch
    from torch.nn import functional as F

    from itm_core.data import load_images
    from itm_core.models.loop import one_cycle, seed_everything
    from itm_core.models.text_to_image import images_to_tensor

    seed_everything(seed)
    data = dataset.load()
    split = {s: data.split(s) for s in ("train", "val", "test")}
    x = {s: images_to_tensor(load_images(d.image_paths()), resolution) for s, d in split.items()}
    scenes = {s: _scenes(d) for s, d in split.items()}
    y = {s: _labels(v) for s, v in scenes.items()}
    net = _reader_net(resolution)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = 64
    steps = max(1, len(x["train"]) // batch)
    sched = one_cycle(opt, 2e-3, epochs * steps, 0.1)
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blur = blur.expand(3, 1, 3, 3)
    best, best_state = -1.0, None
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x["train"]))
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            xb = x["train"][idx]
            soft = torch.rand(len(xb)) < 0.5
            xb = torch.where(
                soft[:, None, None, None], F.conv2d(F.pad(xb, (1, 1, 1, 1), mode="replicate"), blur, groups=3), xb
            )
            xb = xb + 0.05 * torch.rand(len(xb), 1, 1, 1) * torch.randn_like(xb)
            logits = net(xb)
            losses = [F.cross_entropy(logits[k], y["train"][k][idx], ignore_index=-1) for k in HEADS]
            loss = functools.reduce(operator.add, losses)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        reader = AttributeReader(net, resolution)
        val = reader.score(reader.read_tensor(x["val"]), scenes["val"])["attr_all"]
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    reader = AttributeReader(net, resolution)
    real = reader.score(reader.read_tensor(x["test"]), scenes["test"])
    reader.real_scores = {k.replace("attr_", "reader_"): v for k, v in real.items()}
    return reader


def cache_folder() -> Path:
    return Path(os.environ.get("ITM_HOME", ".itm")) / "readers"


def load_or_train(
    dataset_options: dict[str, Any], resolution: int, epochs: int, seed: int, cache: str | Path | None = None
) -> AttributeReader:
    """The reader for these options from the cache, trained and saved there the first time."""
    import torch

    dataset = S.shapes(**dataset_options)  # its options as resolved (ITM_SHAPES_DEFAULTS included) name the cache entry
    key = hashlib.sha256(
        json.dumps(
            {
                "data": dataset.params,
                "resolution": resolution,
                "epochs": epochs,
                "seed": seed,
                "format": FORMAT,
                "shapes": S.FORMAT,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    folder = Path(cache or cache_folder()) / f"shapes-reader-{key}"
    if (folder / "reader.json").is_file():
        net = _reader_net(resolution)
        net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        return AttributeReader(net, resolution, json.loads((folder / "reader.json").read_text())["real_scores"])
    reader = train_reader(dataset, resolution, epochs, seed)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(reader.net.state_dict(), folder / "weights.pt")
    (folder / ".reader.json.tmp").write_text(
        json.dumps({"resolution": resolution, "dataset": dataset.params, "real_scores": reader.real_scores})
    )
    (folder / ".reader.json.tmp").replace(folder / "reader.json")
    return reader


class AttributeAccuracy(Metric):
    """``attribute_accuracy``: ``attr_*`` of generated images against their parsed prompts, with
    ``reader_*`` (the same scores on real test images) and ``attr_unread`` (prompts not parsed).

    ``dataset``: options of the ``shapes`` dataset the reader trains on (default: the built-in one);
    ``resolution``: the side the reader reads at (images are resized to it); ``cache``: the folder of
    trained readers (default ``$ITM_HOME/readers``)."""

    task = "text-to-image"

    def __init__(
        self,
        dataset: dict[str, Any] | None = None,
        resolution: int = 32,
        epochs: int = 30,
        seed: int = 0,
        cache: str | None = None,
    ) -> None:
        if resolution % 8 or not 16 <= resolution <= 128:
            raise ValueError(
                f"attribute_accuracy: resolution must be a multiple of 8 between 16 and 128, got {resolution}"
            )
        if epochs < 1:
            raise ValueError(f"attribute_accuracy: epochs must be at least 1, got {epochs}")
        self.dataset_options = dict(dataset or {})
        self.resolution, self.epochs, self.seed, self.cache = resolution, epochs, seed, cache
        self._reader: AttributeReader | None = None

    @property
    def reader(self) -> AttributeReader:
        if self._reader is None:
            self._reader = load_or_train(self.dataset_options, self.resolution, self.epochs, self.seed, self.cache)
        return self._reader

    def compute(self, images: Sequence[Any], prompts: Sequence[str], **_: Any) -> dict[str, float]:
        if len(images) != len(prompts):
            raise DataError(f"attribute_accuracy: {len(images)} images for {len(prompts)} prompts")
        parsed = [S.parse(p) for p in prompts]
        kept = [i for i, scene in enumerate(parsed) if scene is not None]
        scenes = [scene for scene in parsed if scene is not None]
        if prompts and not kept:
            raise DataError(
                f"attribute_accuracy: none of the {len(prompts)} prompts describes a shapes scene "
                f"(for example {prompts[0]!r}); prompts name one or two objects as 'a small red circle on the left' "
                f"or 'a blue square to the left of a green star', in the words of the shapes captions"
            )
        readings = self.reader.read([images[i] for i in kept])
        scores = self.reader.score(readings, scenes)
        return {**scores, "attr_unread": (len(prompts) - len(kept)) / max(1, len(prompts)), **self.reader.real_scores}


@hookimpl
def register_metrics(register):
    register(
        "attribute_accuracy",
        AttributeAccuracy,
        task="text-to-image",
        description="Colour, shape, size, count and position of generated shapes images read by a trained attribute "
        "reader (GenEval style)",
        check_options=lambda folder: {
            "dataset": {"n_train": 64, "n_val": 16, "n_test": 16, "root": str(folder / "shapes")},
            "epochs": 1,
            "cache": str(folder / "readers"),
        },
    )
