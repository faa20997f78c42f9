"""The attribute reader behind ``attribute_accuracy``: prompts parsed into scenes, each attribute
judged, and a reader trained on real ``shapes`` images that reads them back."""

from __future__ import annotations

import random

import pytest

from itm_core import create
from itm_core.data import load_images
from plugins import attributes as A
from plugins import shapes as S


def test_every_caption_template_and_probe_caption_parses_back_to_its_scene():
    rng = random.Random(0)
    for _ in range(400):
        scene = S.random_scene(rng, 0.6)
        for caption in S.captions(scene, 5, rng) + [S.canonical(scene)]:
            assert S.parse(caption) == scene, caption
    assert S.parse("A  Red CIRCLE on the left") == S.Scene(
        (S.Obj("circle", "red", "medium"),), "left"
    )  # no size word: medium
    assert S.parse("a big blue star to the right of a little green cross") == S.Scene(
        (S.Obj("cross", "green", "small"), S.Obj("star", "blue", "large"))
    )
    for unreadable in ("a red circle", "a dog on a sofa", "赤い丸", "", "a red circle, a blue star and a green cross"):
        assert S.parse(unreadable) is None


def test_each_attribute_is_judged_on_its_own():
    red, blue = S.Obj("circle", "red", "small"), S.Obj("star", "blue", "large")
    prompt = S.Scene((red, blue))
    right = A.judge(prompt, A.Reading(2, "left", (red, blue)))
    assert all(right.values())
    swapped = A.judge(prompt, A.Reading(2, "left", (blue, red)))  # right objects, wrong sides
    assert swapped["color"] and swapped["shape"] and swapped["size"] and not swapped["position"] and not swapped["all"]
    recoloured = A.judge(prompt, A.Reading(2, "left", (S.Obj("circle", "green", "small"), blue)))
    assert not recoloured["color"] and recoloured["shape"] and recoloured["position"] and not recoloured["all"]
    one = A.judge(S.Scene((red,), "top"), A.Reading(2, "bottom", (red, blue)))
    assert one["color"] and one["shape"] and not one["count"] and not one["position"] and not one["all"]


@pytest.fixture(scope="module")
def reader_home(tmp_path_factory):
    return tmp_path_factory.mktemp("itm-home")


@pytest.mark.slow
def test_reader_reads_real_images_and_scores_prompts(reader_home, monkeypatch):
    monkeypatch.setenv("ITM_HOME", str(reader_home))
    options = {"n_train": 400, "n_val": 40, "n_test": 60, "seed": 5, "image_size": 64}
    metric = create("metric", "attribute_accuracy", dataset=options, resolution=16, epochs=10)
    test = S.shapes(**options).load().split("test")
    images = load_images(test.image_paths())
    prompts = [refs[0] for refs in test.captions_by_image()]
    scores = metric.compute(images=images, prompts=prompts)
    # the real test images against their own captions score what the reader scored on the manifest's objects:
    # the parsed captions and the manifest describe the same scenes
    for attribute in A.ATTRIBUTES:
        assert scores[f"attr_{attribute}"] == pytest.approx(scores[f"reader_{attribute}"])
    assert scores["attr_unread"] == 0
    # a reader trained on 400 small images already reads colour and count well above chance (1/8 and 1/2)
    assert scores["reader_color"] > 0.6 and scores["reader_count"] > 0.8
    # prompts of other images: the scores fall
    shuffled = prompts[1:] + prompts[:1]
    worse = metric.compute(images=images, prompts=shuffled)
    assert worse["attr_color"] < scores["attr_color"] and worse["attr_all"] <= scores["attr_all"]
    # cached: a second metric loads the same reader instead of training again
    again = create("metric", "attribute_accuracy", dataset=options, resolution=16, epochs=10)
    assert again.compute(images=images, prompts=prompts) == scores
    assert len(list((reader_home / "readers").iterdir())) == 1

    # prompts it cannot read are counted and left out; none readable is an error that says what is read
    mixed = metric.compute(images=images[:4], prompts=prompts[:3] + ["赤い丸"])
    assert mixed["attr_unread"] == pytest.approx(0.25)
    with pytest.raises(
        ValueError, match=r"none of the 2 prompts describes a shapes scene .*'a small red circle on the left'"
    ):
        metric.compute(images=images[:2], prompts=["a dog", "赤い丸"])
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        metric.compute(images=images[:2], prompts=prompts[:1])
    with pytest.raises(ValueError, match="resolution must be a multiple of 8"):
        create("metric", "attribute_accuracy", resolution=20)
