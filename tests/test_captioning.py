"""The trained captioner (features as a prefix to a small GPT-2) on solid-colour images whose captions
name their colour, and the caption grid."""

from __future__ import annotations

import random

import pytest
from colour_data import COLOURS, colour_images
from PIL import Image

from itm_core import ModelError, create
from itm_core.testing import assert_conforms


def test_tokenizer_is_trained_on_the_captions():
    from itm_core.models.captioning import train_tokenizer

    tok = train_tokenizer(["A red square", "a blue square on the left"])
    vocab = tok.get_vocab()
    assert {"red", "blue", "square", "left", "[PAD]", "[BOS]", "[EOS]", "[UNK]"} <= set(vocab)
    assert tok.decode(tok.encode("a RED square").ids) == "a red square"
    assert tok.encode("a purple square").tokens == ["a", "[UNK]", "square"]
    with pytest.raises(ValueError, match="no captions"):
        train_tokenizer([])


@pytest.mark.slow
def test_captioner_learns_colours_and_round_trips(tmp_path):
    from itm_core.models.captioning import Captioner, CaptioningOptions, train_captioner

    encoder = create("encoder", "color-histogram")
    train_images, train_names = colour_images(10, seed=0)
    val_images, val_names = colour_images(3, seed=1)
    rng = random.Random(0)
    train_captions = [rng.choice([f"a {c} square", f"a square that is {c}"]) for c in train_names]
    config = CaptioningOptions(
        prefix_tokens=1, n_embd=32, n_layer=1, n_head=2, dropout=0.0, epochs=40, batch_size=10, lr=3e-3, patience=40
    )
    captioner, result = train_captioner(
        {"name": "color-histogram", "options": {}},
        encoder.encode(train_images),
        train_captions,
        list(range(len(train_images))),
        encoder.encode(val_images),
        [f"a {c} square" for c in val_names],
        list(range(len(val_images))),
        config,
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 3
    assert result.best_value == min(h["val_loss"] for h in result.history)
    captioner.encoder = encoder
    test_images, test_names = colour_images(2, seed=2)
    for beams in (1, 3):
        captions = captioner.caption_images(test_images, num_beams=beams)
        assert [next((c for c in COLOURS if c in caption.split()), None) for caption in captions] == test_names, (
            captions
        )
    assert captioner.caption_images([]) == []

    folder = captioner.save(tmp_path / "captioner")
    loaded = Captioner.load(folder)
    assert loaded.caption_images(test_images) == captioner.caption_images(test_images)
    assert create("generator", "trained-captioner", model=str(folder), num_beams=1).generate(
        test_images
    ) == captioner.caption_images(test_images)
    assert_conforms("generator", "trained-captioner", model=str(folder))
    with pytest.raises(ModelError, match="not a saved captioner"):
        Captioner.load(tmp_path)


def test_caption_grid_fits_its_images_and_long_titles():
    """Two images make a grid two cells wide (no blank columns); a long prompt wraps inside the figure."""
    import matplotlib.pyplot as plt

    from itm_core.ops.plots import caption_grid

    images = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    fig = caption_grid(
        images,
        ["a red circle", "a big blue star at the top of the picture, next to a small green square on the left side"],
    )
    try:
        assert fig.get_size_inches()[0] == pytest.approx(6.0) and len(fig.axes) == 2
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        for ax in fig.axes:  # every title is inside the figure, not clipped at its top edge
            title = ax.title.get_window_extent(renderer)
            assert title.y1 <= box.y1 + 1 and title.x0 >= box.x0 - 1 and title.x1 <= box.x1 + 1
    finally:
        plt.close(fig)
