"""The harder built-in dataset: captions name every object and relation, negatives are false in one
way, families share their words, objects are where the manifest says."""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from itm_core import create
from plugins.scene_specs import SceneSpec, random_spec, true_relations
from plugins.scenes import COLORS, FORMAT, describe, family, hard_negatives, render
from plugins.shapes import data_folder


def _specs(n: int, seed: int = 0) -> list[SceneSpec]:
    rng = random.Random(seed)
    return [random_spec(rng, 4) for _ in range(n)]


def test_relations_are_true_and_captions_name_every_object():
    rng = random.Random(1)
    counts = Counter()
    for spec in _specs(300):
        counts[len(spec.objects)] += 1
        for a, b, r in zip(spec.objects, spec.objects[1:], spec.relations):
            assert r in true_relations(a, b)
        for _ in range(3):
            text = describe(spec, rng)
            for p in spec.objects:
                assert p.obj.color in text and p.obj.shape in text
    assert set(counts) == {1, 2, 3, 4}


def test_negatives_are_false_in_one_way_and_keep_the_words_of_a_binding_swap():
    rng = random.Random(2)
    for spec in _specs(200, 3):
        true = describe(spec, None)
        negatives = hard_negatives(spec, rng)
        assert len(set(negatives.values()) | {true}) == 4
        if len(spec.objects) > 1:
            # a relation swap changes one relation word; a colour swap between objects keeps the bag of words
            assert sum(a != b for a, b in zip(true.split(), negatives["neg_position"].split())) <= 2
            if len({p.obj.color for p in spec.objects}) > 1:
                assert sorted(re.findall(r"[a-z-]+", true)) == sorted(re.findall(r"[a-z-]+", negatives["neg_color"]))


def test_families_share_their_words_but_not_their_meaning():
    rng = random.Random(4)
    shared = 0
    for spec in _specs(100, 5):
        members = family(spec, 3, rng)
        canon = [describe(m, None) for m in members]
        assert len(set(canon)) == len(canon)
        for m in members[1:]:
            words, base = Counter(re.findall(r"[a-z-]+", describe(m, None))), Counter(re.findall(r"[a-z-]+", canon[0]))
            # colours or shapes exchanged: the same words; mirrored: only "left" and "right" change
            assert words == base or set((words - base) + (base - words)) <= {"left", "right"}
            shared += 1
    assert shared > 100


@pytest.mark.parametrize("clutter", [0, 16])
def test_objects_are_drawn_where_the_manifest_says(clutter):
    rng = random.Random(6)
    checked = 0
    for spec in _specs(60, 7):
        image, placed = render(spec, 128, rng, textured=True, jitter=False, clutter=clutter)
        pixels = np.asarray(image).astype(int)
        for where in placed:
            covered = [
                o
                for o in placed
                if o is not where
                and (o["cx"] - where["cx"]) ** 2 + (o["cy"] - where["cy"]) ** 2 < (o["r"] + where["r"]) ** 2
            ]
            if covered or where["shape"] in (
                "cross",
                "star",
                "triangle",
            ):  # thin shapes may not cover their exact centre
                continue
            y, x = int(where["cy"] * 128), int(where["cx"] * 128)
            assert np.abs(pixels[y, x] - np.array(COLORS[where["color"]])).max() <= 1
            checked += 1
    assert checked > 20


def test_clutter_puts_palette_colours_no_caption_names_outside_the_objects(tmp_path):
    def palette_pixels_outside_objects(clutter: int) -> tuple[int, set[str]]:
        rng = random.Random(11)
        count, colours = 0, set()
        for spec in _specs(20, 12):
            image, placed = render(spec, 128, rng, textured=False, jitter=False, clutter=clutter)
            pixels = np.asarray(image).astype(int)
            yy, xx = np.mgrid[0:128, 0:128] / 128
            outside = np.ones((128, 128), bool)
            for o in placed:  # a margin around each object's disc
                outside &= (xx - o["cx"]) ** 2 + (yy - o["cy"]) ** 2 > (o["r"] * 1.5) ** 2
            named = {o["color"] for o in placed}
            for name, rgb in COLORS.items():
                near = (np.abs(pixels - np.array(rgb)).max(axis=2) <= 25) & outside
                count += int(near.sum())
                if near.sum() >= 20 and name not in named:
                    colours.add(name)
        return count, colours

    plain, plain_colours = palette_pixels_outside_objects(0)
    cluttered, cluttered_colours = palette_pixels_outside_objects(16)
    assert plain == 0 and not plain_colours  # the plain grey background holds no palette colour
    assert (
        cluttered > 20 * 300 and len(cluttered_colours) >= 6
    )  # several hundred pixels an image, in colours the captions do not name

    def folder(**options):
        return create("dataset", "scenes", root=str(tmp_path), **options).folder

    assert folder() == folder(clutter=0) != folder(clutter=8)  # the folders of existing options keep their names
    with pytest.raises(ValueError, match="clutter must be between 0 .none. and 64 strokes, got 100"):
        create("dataset", "scenes", clutter=100)


def test_cast_tints_the_whole_image_with_one_gain_per_channel(tmp_path):
    gains = []
    for spec in _specs(12, 13):
        plain, placed = render(spec, 96, random.Random(str(spec)), jitter=False)
        tinted, same_places = render(spec, 96, random.Random(str(spec)), jitter=False, cast=0.3)
        assert same_places == placed
        a, b = np.asarray(plain).astype(float), np.asarray(tinted).astype(float)
        usable = (a > 20) & (b < 250)  # not clipped in either image
        gain = np.array([np.median(b[..., c][usable[..., c]] / a[..., c][usable[..., c]]) for c in range(3)])
        assert np.all((gain > 0.69) & (gain < 1.31))
        predicted = np.clip(a * gain, 0, 255)
        assert np.mean(np.abs(predicted - b) <= 2) > 0.98  # the same gain on every pixel of a channel
        gains.append(gain)
    spread = np.ptp(np.array(gains), axis=0)
    assert np.all(spread > 0.2)  # drawn anew for each image
    assert np.all(np.ptp(np.array(gains), axis=1) > 0.02)  # and apart for each channel: a tint, not a brightness change
    untinted = create("dataset", "scenes", cast=0.0, root=str(tmp_path))
    before = {k: v for k, v in untinted.params.items() if k != "cast"}
    assert "cast" not in untinted.params and untinted.folder == data_folder(
        "scenes", before, FORMAT, str(tmp_path)
    )  # as named before the option
    assert create("dataset", "scenes", root=str(tmp_path)).params["cast"] == 0.2  # the default tints
    with pytest.raises(ValueError, match="cast must be at least 0 .none. and below 1, got 1.5"):
        create("dataset", "scenes", cast=1.5)


def test_dataset_is_deterministic_and_carries_the_probe_and_questions(tmp_path):
    a = create("dataset", "scenes", n_train=9, n_val=3, n_test=3, image_size=64, root=str(tmp_path / "a")).load()
    b = create("dataset", "scenes", n_train=9, n_val=3, n_test=3, image_size=64, root=str(tmp_path / "b")).load()
    assert a.captions == b.captions and len(a.split("train").image_paths()) == 9
    for column in ("probe_true", "neg_color", "neg_shape", "neg_position", "qa", "objects"):
        assert len(a.image_extras[column]) == 15
    assert np.array_equal(np.asarray(Image.open(a.image_paths()[0])), np.asarray(Image.open(b.image_paths()[0])))
    with pytest.raises(ValueError, match="max_objects must be between 1 and 4"):
        create("dataset", "scenes", max_objects=6)


def test_demo_names_the_datasets_it_runs_on():
    from typer.testing import CliRunner

    from cli.main import app

    out = CliRunner().invoke(app, ["demo", "--dataset", "coco"])
    assert out.exit_code == 2 and "--dataset must be shapes or scenes, got 'coco'" in out.output
