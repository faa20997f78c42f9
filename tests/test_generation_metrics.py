"""The generation metrics (FD, KID, r_precision, alignment, clipscore) and the matcher's text tower as
a generator's condition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from colour_data import colour_images, mean_colour, t2i, text_features

from itm_core import create
from itm_core.testing import assert_conforms


def test_frechet_distance_matches_an_eigenvalue_computation():
    images, _ = colour_images(6, seed=0)
    fd = create("metric", "fd", encoder="color-histogram", encoder_options={"bins": 2, "grid": 1})
    other, _ = colour_images(6, seed=4)
    a, b = fd.features(images).numpy(), fd.features(other[:9]).numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert fd.compute(images=images, reference_images=other[:9])["fd"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert fd.compute(images=images, reference_images=images)["fd"] == pytest.approx(0.0, abs=1e-6)
    reds = [img for img, n in zip(*colour_images(6, seed=7)) if n == "red"]
    blues = [img for img, n in zip(*colour_images(6, seed=8)) if n == "blue"]
    reds2 = [img for img, n in zip(*colour_images(6, seed=9)) if n == "red"]
    assert (
        fd.compute(images=reds, reference_images=blues)["fd"]
        > 10 * fd.compute(images=reds, reference_images=reds2)["fd"]
    )
    with pytest.raises(ValueError, match="reference_images"):
        fd.compute(images=images)
    with pytest.raises(ValueError, match="at least 2"):
        fd.compute(images=images[:1], reference_images=images)


def test_kid_is_the_unbiased_polynomial_mmd():
    kid = create(
        "metric", "kid", encoder="color-histogram", encoder_options={"bins": 2, "grid": 1}, subsets=1, subset_size=1000
    )
    a_img, _ = colour_images(3, seed=0)
    b_img, _ = colour_images(3, seed=5)
    a, b = kid.features(a_img).numpy(), kid.features(b_img).numpy()
    d, n, m = a.shape[1], len(a), len(b)

    def k(x, y):
        return (float(x @ y) / d + 1) ** 3

    xx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    assert kid.compute(images=a_img, reference_images=b_img)["kid"] == pytest.approx(
        xx + yy - 2 * xy, rel=1e-6, abs=1e-9
    )


@pytest.fixture(scope="module")
def colour_matcher(tmp_path_factory):
    """A matcher trained on colour images and colour captions, saved to a folder."""
    from itm_core.encode.features import FeatureSplit
    from itm_core.models.matcher import Matcher
    from itm_core.models.training import ContrastiveTraining, train_contrastive

    images, names = colour_images(10, seed=0)
    captions = [f"a {c} square" for c in names]
    image_encoder, text_encoder = create("encoder", "color-histogram"), create("encoder", "bow")
    text_encoder.fit(captions)
    split = FeatureSplit(image_encoder.encode(images), text_encoder.encode(captions), torch.arange(len(images)))
    torch.manual_seed(0)  # the heads' first weights: the same matcher whichever tests ran before
    matcher = Matcher(
        {"name": "color-histogram", "options": {}},
        {"name": "bow", "options": {}},
        int(image_encoder.dim),
        int(text_encoder.dim),
        embed_dim=16,
        hidden_dim=0,
        dropout=0.0,
    )
    train_contrastive(
        matcher,
        split,
        split,
        ContrastiveTraining(epochs=100, batch_size=10, lr=1e-2, patience=100, monitor="rsum", seed=0),
    )
    matcher.attach_encoders(image_encoder, text_encoder)
    return str(matcher.save(tmp_path_factory.mktemp("matcher") / "matcher"))


def test_r_precision_alignment_and_clipscore_follow_the_matcher(colour_matcher):
    images, names = colour_images(2, seed=3)
    right = [f"a {c} square" for c in names]
    wrong = [f"a {'blue' if c != 'blue' else 'red'} square" for c in names]
    r_precision = create("metric", "r_precision", matcher=colour_matcher, candidates=2, seed=0)
    good = r_precision.compute(images=images, prompts=right, distractors=list(set(right)))
    bad = r_precision.compute(images=images, prompts=wrong, distractors=list(set(right)))
    assert good == {"r_precision": 1.0, "r_precision_chance": 0.5}
    assert bad["r_precision"] <= 0.5 < good["r_precision"]
    # a wrong prompt wins only against another wrong colour: against the image's own caption it loses
    for image, w, r in zip(images, wrong, right):
        assert r_precision.compute(images=[image], prompts=[w], distractors=[r])["r_precision"] == 0.0
    # the distractors never repeat the prompt or a caption of the same image
    with pytest.raises(ValueError, match="no distractor prompts"):
        r_precision.compute(images=images[:1], prompts=right[:1], distractors=right[:1])
    alone = r_precision.compute(
        images=images[:1],
        prompts=right[:1],
        distractors=["a red square", "a green square", "a blue square"],
        equivalents=[["a green square"]],
    )
    assert alone["r_precision_chance"] == 0.5

    alignment = create("metric", "alignment", matcher=colour_matcher)
    assert (
        alignment.compute(images=images, prompts=right)["alignment"]
        > alignment.compute(images=images, prompts=wrong)["alignment"]
    )
    clipscore = create("metric", "clipscore", matcher=colour_matcher)
    assert (
        clipscore.compute(predictions=right, references=[[]] * len(right), images=images)["clipscore"]
        > clipscore.compute(predictions=wrong, references=[[]] * len(wrong), images=images)["clipscore"]
    )
    assert 0 <= clipscore.compute(predictions=right, images=images)["clipscore"] <= 2.5
    with pytest.raises(ValueError, match="needs the input 'images'"):
        clipscore.compute(predictions=right)
    with pytest.raises(ValueError, match="6 images for 5 prompts"):
        alignment.compute(images=images, prompts=right[:5])


@pytest.mark.slow
def test_matcher_text_conditions_a_generator_with_the_matchers_text_tower_and_keeps_its_copy(colour_matcher, tmp_path):
    import shutil

    from itm_core.models.matcher import Matcher
    from itm_core.models.text_to_image import TextToImage, images_to_tensor, train_text_to_image

    encoder = create("encoder", "matcher-text", matcher=colour_matcher)
    matcher = Matcher.load(colour_matcher)
    prompts = ["a red square", "a green square", "a blue square"]
    assert encoder.dim == 16
    emb = encoder.encode(prompts)
    assert torch.allclose(emb, matcher.embed_texts(prompts).float(), atol=1e-6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert encoder.encode([]).shape == (0, 16)

    images, names = colour_images(12, seed=0)
    captions = [f"a {c} square" for c in names]
    val_images, val_names = colour_images(2, seed=1)
    config = t2i(model="cvae", resolution=16, channels=16, latent_dim=4, cond_dim=16, epochs=60, batch_size=12, lr=3e-3)
    model, _ = train_text_to_image(
        {"name": "matcher-text", "options": {"matcher": colour_matcher}},
        images_to_tensor(images, 16),
        text_features(captions, encoder),
        images_to_tensor(val_images, 16),
        text_features([f"a {c} square" for c in val_names], encoder),
        config,
    )
    model.encoder = encoder
    asked = prompts * 10
    drawn = model.generate(asked, seed=5)
    assert sum(mean_colour(img) == p.split()[1] for img, p in zip(drawn, asked)) >= 27
    folder = model.save(tmp_path / "cvae")

    # the saved model reads prompts with its own copy of the text tower, even once the matcher is gone
    moved = tmp_path / "gone"
    shutil.move(colour_matcher, moved)
    try:
        loaded = TextToImage.load(folder)
        assert torch.allclose(loaded.encoder.encode(prompts), emb, atol=1e-6)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(loaded.generate(asked, seed=5), drawn))
    finally:
        shutil.move(moved, colour_matcher)

    with pytest.raises(LookupError, match=r"matcher-text: cannot load the matcher .*itm run retrain"):
        create("encoder", "matcher-text", matcher=str(tmp_path / "no-such-matcher")).encode(["a red square"])
    with pytest.raises(ValueError, match="matcher must be a model URI or a saved matcher folder"):
        create("encoder", "matcher-text", matcher=" ")


def test_generation_metrics_pass_the_conformance_kit(colour_matcher):

    for name, options in [
        ("clipscore", {"matcher": colour_matcher}),
        ("alignment", {"matcher": colour_matcher}),
        ("r_precision", {"matcher": colour_matcher, "candidates": 3}),
        ("fd", {"encoder": "color-histogram"}),
        ("kid", {"encoder": "color-histogram", "subset_size": 3}),
    ]:
        assert_conforms("metric", name, **options)
