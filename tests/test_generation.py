"""The trained generators (captioner, conditional VAE, diffusion, GAN, VQ-VAE) and the generation metrics, on
solid-colour images whose captions name their colour: small enough to train in seconds."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from itm_core import ModelError, create
from itm_core.testing import assert_conforms

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220)}


def colour_images(per_colour: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Noisy solid-colour squares and the colour of each."""
    rng = np.random.default_rng(seed)
    images, names = [], []
    for name, rgb in COLOURS.items():
        for _ in range(per_colour):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (16, 16, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            names.append(name)
    return images, names


def t2i(model: str = "cvae", **options: Any) -> Any:
    """A text-to-image model's options for these tests: its defaults, in float32 (whatever the CPU
    offers) and without a time limit, and ``options``."""
    from itm_core.models.text_to_image import FAMILIES

    return FAMILIES[model].options(**{"precision": "fp32", "time_limit_s": 0, **options})


def mean_colour(image: Image.Image) -> str:
    """The named colour nearest to the image's mean pixel."""
    mean = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    return min(COLOURS, key=lambda c: float(((mean - np.array(COLOURS[c])) ** 2).sum()))


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


def _text_features(prompts: list[str], encoder, tokens: bool = False):
    from itm_core.models.text_to_image import TextFeatures

    return TextFeatures(encoder.encode(prompts), None, torch.arange(len(prompts)))


@pytest.mark.slow
def test_conditional_vae_draws_the_prompted_colour(tmp_path):
    from itm_core.models.text_to_image import TextToImage, images_to_tensor, train_text_to_image

    images, names = colour_images(12, seed=0)
    prompts = [f"a {c} square" for c in names]
    encoder = create("encoder", "bow")
    encoder.fit(prompts)
    config = t2i(model="cvae", resolution=16, channels=16, latent_dim=4, cond_dim=16, epochs=60, batch_size=12, lr=3e-3)
    val_images, val_names = colour_images(2, seed=1)
    seen = []
    model, result = train_text_to_image(
        {"name": "bow", "options": {}},
        images_to_tensor(images, 16),
        _text_features(prompts, encoder),
        images_to_tensor(val_images, 16),
        _text_features([f"a {c} square" for c in val_names], encoder),
        config,
        on_epoch=lambda epoch, metrics, m: seen.append(epoch),
    )
    assert seen == list(range(1, 61)) and result.steps == 60 * 3
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    model.encoder = encoder
    asked = ["a red square", "a green square", "a blue square"] * 10
    drawn = model.generate(asked, seed=5)
    assert [img.size for img in drawn] == [(16, 16)] * 30
    # z is drawn from the prior, so a draw from its tail may miss: nine in ten follow the prompt
    assert sum(mean_colour(img) == p.split()[1] for img, p in zip(drawn, asked)) >= 27
    same = model.generate(asked, seed=5)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(drawn, same))

    folder = model.save(tmp_path / "cvae")
    loaded = TextToImage.load(folder)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(loaded.generate(asked, seed=5), drawn))
    plugin = create("generator", "trained-text-to-image", model=str(folder), seed=5, size=64)
    assert [img.size for img in plugin.generate(asked[:2])] == [(64, 64)] * 2
    assert_conforms("generator", "trained-text-to-image", model=str(folder))
    with pytest.raises(ValueError, match="is a text-to-image model, not a captioner"):
        create("generator", "trained-captioner", model=str(folder))


def test_cvae_learned_prior_is_a_gaussian_of_the_text_and_samples_are_drawn_from_it(tmp_path):
    import json

    from itm_core.models.text_to_image import CONFIG_FILE, ConditionalVAE, TextToImage

    torch.manual_seed(0)
    base = dict(model="cvae", resolution=16, channels=8, latent_dim=4, cond_dim=8, prior_weight=None, temperature=1.0)
    learned, standard = (
        ConditionalVAE(6, t2i(**base)),
        ConditionalVAE(6, t2i(**base, cvae_prior="standard")),
    )
    assert learned.prior is not None and standard.prior is None
    standard.load_state_dict({k: v for k, v in learned.state_dict().items() if not k.startswith("prior.")})
    images, text = torch.rand(5, 3, 16, 16) * 2 - 1, torch.randn(5, 6)
    last = learned.prior[-1]
    with torch.no_grad():
        last.weight.zero_(), last.bias.zero_()  # p(z | c) = N(0, I): the same objective as the standard prior
    torch.manual_seed(1)
    a = learned.training_loss(images, text, None)
    torch.manual_seed(1)
    b = standard.training_loss(images, text, None)
    assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([1.5, -2.0, 0.5, 3.0, -8.0, -8.0, -8.0, -8.0]))  # mean, then a tiny log-variance
        mu, logvar = learned.prior_of(learned.condition(text))
        assert torch.allclose(mu, torch.tensor([1.5, -2.0, 0.5, 3.0]).expand(5, 4)) and torch.all(logvar == -8)
        learned.decode = lambda z, cond: z  # sample() then returns the z it drew
        drawn = learned.sample(text, None, torch.Generator().manual_seed(0))
        assert torch.allclose(drawn, mu, atol=0.1)  # a standard deviation of e^-4 around the prior's mean
        last.bias[4:] = 5.0  # a prior wider than N(0, I) is clamped to unit variance
        assert torch.all(learned.prior_of(learned.condition(text))[1] == 0)
        assert 0.5 < (learned.sample(text, None, torch.Generator().manual_seed(0)) - mu).std() < 1.5
        del learned.decode
    with pytest.raises(ValidationError, match="cvae_prior"):
        t2i(**base, cvae_prior="flat")

    # a model saved before the learned prior, the FiLM decoder and the token condition existed has none of their
    # keys in its config: it loads as a standard prior with the deconvolution decoder on the pooled text, and
    # draws what it drew before
    encoder = create("encoder", "bow")
    encoder.fit(["a red square", "a blue square"])
    old = ConditionalVAE(int(encoder.dim), t2i(**base, cvae_prior="standard", cvae_decoder="deconv", align_weight=0.0))
    folder = TextToImage(old, {"name": "bow", "options": {}}, int(encoder.dim), False, encoder).save(tmp_path / "old")
    meta_file = folder / CONFIG_FILE
    meta = json.loads(meta_file.read_text())
    for key in ("cvae_prior", "cvae_decoder", "text_condition", "align_weight", "adv_weight"):
        del meta["config"][key]
    # and the one flat configuration of earlier versions saved every model's keys with each model
    meta["config"].update(
        noise_dim=64,
        block_channels=[32, 64, 64],
        train_timesteps=1000,
        prediction_type="sample",
        sample_steps=30,
        guidance_scale=3.0,
        uncond_prob=0.1,
        ema_decay=0.995,
        codebook_size=128,
        code_dim=64,
        code_stride=4,
        vq_epochs=20,
        prior_width=256,
        prior_layers=4,
        prior_dropout=0.2,
        top_k=32,
    )
    meta_file.write_text(json.dumps(meta))
    loaded = TextToImage.load(folder)
    assert (
        loaded.config.text_condition == "pooled"
        and not loaded.tokens
        and loaded.model.align is None
        and loaded.model.critic is None
    )
    assert loaded.config.cvae_prior == "standard" and loaded.model.prior is None
    assert loaded.config.cvae_decoder == "deconv" and loaded.model.decoder is not None
    same = TextToImage(old, {"name": "bow", "options": {}}, int(encoder.dim), False, encoder)
    assert all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(loaded.generate(["a red square"], seed=3), same.generate(["a red square"], seed=3))
    )


def test_cvae_film_decoder_scales_and_shifts_every_resolution_by_the_text():
    from torch.nn import functional as F

    from itm_core.config import RetrainParams
    from itm_core.models.text_to_image import ConditionalVAE, FiLMUpBlock

    torch.manual_seed(0)
    base = dict(model="cvae", resolution=16, channels=8, latent_dim=4, cond_dim=8)
    film, deconv = (
        ConditionalVAE(6, t2i(**base)),
        ConditionalVAE(6, t2i(**base, cvae_decoder="deconv")),
    )
    assert film.decoder is None and len(film.up) == 3 and deconv.decoder is not None and not hasattr(deconv, "up")
    z, text = torch.randn(5, 4), torch.randn(5, 6)
    for model in (film, deconv):
        out = model.decode(z, model.condition(text))
        assert out.shape == (5, 3, 16, 16) and out.abs().max() <= 1
        model.training_loss(torch.rand(5, 3, 16, 16) * 2 - 1, text, None).backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    block = FiLMUpBlock(4, 8, cond_dim=3)
    x, c1, c2 = torch.randn(2, 4, 5, 5), torch.randn(2, 3), torch.randn(2, 3)
    with torch.no_grad():
        shortcut = block.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        assert block(x, c1).shape == (2, 8, 10, 10)
        assert not torch.allclose(block(x, c1), block(x, c2))  # the text changes the block's output
        block.film.weight.zero_()
        shift = torch.linspace(-1, 1, 8)
        block.film.bias.copy_(
            torch.cat([torch.zeros(8), torch.zeros(8), -torch.ones(8), shift])
        )  # second scale 1 + (-1) = 0
        assert torch.allclose(
            block(x, c1) - shortcut, F.silu(shift)[None, :, None, None].expand(2, 8, 10, 10), atol=1e-6
        )
        assert torch.allclose(block(x, c1), block(x, c2))  # with the text's weights zeroed, only the bias acts

    with pytest.raises(ValidationError, match="cvae_decoder"):
        t2i(**base, cvae_decoder="unet")
    with pytest.raises(ValidationError, match="cvae_decoder"):
        RetrainParams(task="text-to-image", text_to_image={"cvae_decoder": "unet"})


@pytest.mark.slow
def test_diffusion_trains_samples_and_round_trips(tmp_path):
    from itm_core.models.text_to_image import (
        ConditionalDiffusion,
        TextToImage,
        images_to_tensor,
        train_text_to_image,
    )

    images, names = colour_images(8, seed=0)
    prompts = [f"a {c} square" for c in names]
    encoder = create("encoder", "bow")
    encoder.fit(prompts)
    config = t2i(
        model="diffusion",
        resolution=16,
        block_channels=(16, 32),
        cond_dim=16,
        sample_steps=4,
        epochs=3,
        batch_size=8,
        lr=1e-3,
    )
    model, result = train_text_to_image(
        {"name": "bow", "options": {}},
        images_to_tensor(images, 16),
        _text_features(prompts, encoder),
        images_to_tensor(images[:6], 16),
        _text_features(prompts[:6], encoder),
        config,
    )
    assert isinstance(model.model, ConditionalDiffusion) and result.steps == 9
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    model.encoder = encoder
    first = model.generate(["a red square", "a blue square"], seed=1)
    assert [img.size for img in first] == [(16, 16)] * 2
    again = model.generate(["a red square", "a blue square"], seed=1)
    other = model.generate(["a red square", "a blue square"], seed=2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other[0]))
    loaded = TextToImage.load(model.save(tmp_path / "diffusion"))
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(loaded.generate(["a red square", "a blue square"], seed=1), first)
    )
    assert model.generate([]) == []


@pytest.mark.parametrize(
    "model_name, options",
    [
        ("gan", dict(channels=8, noise_dim=8, epochs=40, lr=2e-3, ema_decay=0.9)),
        (
            "vqvae",
            dict(
                channels=16,
                code_dim=8,
                codebook_size=16,
                vq_epochs=20,
                prior_width=32,
                prior_layers=1,
                epochs=40,
                top_k=4,
                guidance_scale=2.0,
                lr=5e-3,
            ),
        ),
    ],
)
@pytest.mark.slow
def test_gan_and_vqvae_draw_the_prompted_colour(tmp_path, model_name, options):
    from itm_core.models.text_to_image import (
        MODELS,
        TextToImage,
        images_to_tensor,
        train_text_to_image,
    )

    images, names = colour_images(24, seed=0)
    prompts = [f"a {c} square" for c in names]
    encoder = create("encoder", "bow")
    encoder.fit(prompts)
    config = t2i(model=model_name, resolution=16, cond_dim=16, batch_size=8, **options)
    val_images, val_names = colour_images(2, seed=1)
    stages = []
    model, result = train_text_to_image(
        {"name": "bow", "options": {}},
        images_to_tensor(images, 16),
        _text_features(prompts, encoder),
        images_to_tensor(val_images, 16),
        _text_features([f"a {c} square" for c in val_names], encoder),
        config,
        on_epoch=lambda epoch, metrics, m: stages.append(metrics.get("stage")),
    )
    assert isinstance(model.model, MODELS[model_name]) and result.steps == config.epochs * 9
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    if model_name == "vqvae":  # the auto-encoder first, then the prior
        assert stages == [0.0] * 20 + [1.0] * 20
        prior = [h for h in result.history if h["stage"] == 1.0]  # the prior of its best validation epoch is kept
        assert result.best_epoch == min(prior, key=lambda h: h["val_loss"])["epoch"]
    model.encoder = encoder
    asked = ["a red square", "a green square", "a blue square"] * 2
    drawn = model.generate(asked, seed=3)
    assert [img.size for img in drawn] == [(16, 16)] * 6
    assert [mean_colour(img) for img in drawn] == [p.split()[1] for p in asked]
    loaded = TextToImage.load(model.save(tmp_path / model_name))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(loaded.generate(asked, seed=3), drawn))
    other = model.generate(asked, seed=4)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(other, drawn))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate(["a red square", ""])


def test_the_gan_averages_its_generator_and_keeps_the_live_discriminator():
    import copy

    from itm_core.models.text_to_image import TextGAN, update_average

    live = TextGAN(10, t2i(model="gan", resolution=16, channels=8))
    ema = copy.deepcopy(live)
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    update_average(ema, live, 0.9)
    averaged, current = dict(ema.named_parameters()), dict(live.named_parameters())
    assert torch.allclose(averaged["critic.weight_orig"], current["critic.weight_orig"])  # copied
    assert torch.allclose(
        averaged["to_rgb.weight"], current["to_rgb.weight"] - 0.9, atol=1e-6
    )  # moved a tenth of the way


def test_vq_codebook_starts_on_data_restarts_dead_codes_and_passes_gradients_straight_through():
    from itm_core.models.text_to_image import Codebook

    torch.manual_seed(0)
    book = Codebook(8, 4, decay=0.5).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    quantised, commitment = book(z)
    quantised.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through
    still = Codebook(8, 4, decay=1.0).train()  # no moving average: the codes stay where they started
    still(z.detach())
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    assert all(torch.cdist(code[None], flat).min() < 1e-3 for code in still.embed)  # started on encodings
    far = z.detach() + 50.0  # the data moves away from every code

    def error(x: torch.Tensor) -> float:
        return float((book.lookup(book.codes(x)) - x).abs().mean())

    before = error(far)
    for _ in range(10):
        book(far)
    assert error(far) < before / 20  # codes left unused were restarted on the new encodings
    assert commitment.item() >= 0


def test_prompts_that_are_empty_too_long_or_not_text_fail_by_number_and_other_scripts_are_reported():
    from itm_core.data import DataError
    from itm_core.models.text_to_image import check_prompts

    assert check_prompts(["a red circle", "a big blue star at the top"]) == []
    notes = check_prompts(["a red circle", "赤い丸", "красный круг", "3 + 4"])
    assert notes == [
        "2 prompt(s) (1, 2) have no letters in the Latin script; an English text encoder reads them as unknown words"
    ]
    with pytest.raises(DataError, match="prompt 1 is empty; describe the image"):
        check_prompts(["a red circle", "   "])
    with pytest.raises(DataError, match="prompt 0 has 1001 characters; at most 1000 are accepted"):
        check_prompts(["x" * 1001])
    with pytest.raises(DataError, match="prompt 0 is NoneType None, not text"):
        check_prompts([None])


# --- metrics ----------------------------------------------------------------------------------------


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
        _text_features(captions, encoder),
        images_to_tensor(val_images, 16),
        _text_features([f"a {c} square" for c in val_names], encoder),
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
    from itm_core.testing import assert_conforms

    for name, options in [
        ("clipscore", {"matcher": colour_matcher}),
        ("alignment", {"matcher": colour_matcher}),
        ("r_precision", {"matcher": colour_matcher, "candidates": 3}),
        ("fd", {"encoder": "color-histogram"}),
        ("kid", {"encoder": "color-histogram", "subset_size": 3}),
    ]:
        assert_conforms("metric", name, **options)


def test_caption_grid_fits_its_images_and_long_titles():
    """Two images make a grid two cells wide (no blank columns); a long prompt wraps inside the figure."""
    import matplotlib.pyplot as plt
    from PIL import Image

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


@pytest.mark.slow
def test_cvae_token_condition_reads_the_text_encoders_tokens(tmp_path):
    """``text_condition: tokens`` (what ``auto`` picks for an encoder with tokens): a transformer over MiniLM's
    token states gives the cvae its condition vector; padding does not change it; it saves and loads."""
    import json

    from itm_core.models.text_to_image import (
        CONFIG_FILE,
        TextFeatures,
        TextToImage,
        images_to_tensor,
        train_text_to_image,
        uses_tokens,
    )
    from itm_core.models.text_to_image.base import TokenCondition

    encoder = create("encoder", "minilm", max_length=16)

    def features(captions: list[str]) -> TextFeatures:
        tokens, mask = encoder.encode_tokens(captions)
        return TextFeatures(tokens, mask, torch.arange(len(captions)))

    images, names = colour_images(12, seed=0)
    rng = random.Random(0)
    captions = [rng.choice([f"a {c} square", f"a square that is {c}"]) for c in names]
    val_images, val_names = colour_images(2, seed=1)
    config = t2i(model="cvae", resolution=16, channels=16, latent_dim=4, cond_dim=16, epochs=60, batch_size=12, lr=3e-3)
    assert uses_tokens(config, encoder)
    model, _ = train_text_to_image(
        {"name": "minilm", "options": {"max_length": 16}},
        images_to_tensor(images, 16),
        features(captions),
        images_to_tensor(val_images, 16),
        features([f"a {c} square" for c in val_names]),
        config,
    )
    assert (
        model.tokens and model.config.text_condition == "tokens" and isinstance(model.model.condition, TokenCondition)
    )
    model.encoder = encoder
    asked = ["a red square", "a square that is green", "a blue square"] * 10
    drawn = model.generate(asked, seed=5)
    assert sum(mean_colour(img) == next(c for c in COLOURS if c in p) for img, p in zip(drawn, asked)) >= 27

    condition = model.model.condition
    tokens, mask = encoder.encode_tokens(["a red square to the left of a blue square"])
    with torch.no_grad():
        longer = torch.cat(
            [tokens, torch.randn(1, 5, tokens.shape[2])], dim=1
        )  # five more tokens, masked out as padding
        padded = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], dim=1)
        assert torch.allclose(condition(tokens, mask), condition(longer, padded), atol=1e-5)
        other = encoder.encode_tokens(["a blue square to the left of a red square"])
        assert not torch.allclose(
            condition(tokens, mask), condition(*other), atol=1e-3
        )  # the word order reaches the condition

    folder = model.save(tmp_path / "cvae")
    assert json.loads((folder / CONFIG_FILE).read_text())["config"]["text_condition"] == "tokens"
    loaded = TextToImage.load(folder)
    assert loaded.tokens and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(loaded.generate(asked, seed=5), drawn)
    )

    bow = create("encoder", "bow")
    bow.fit(captions)
    with pytest.raises(
        ValueError, match=r"text_condition tokens needs token features, and the text encoder 'bow' gives none"
    ):
        uses_tokens(t2i(model="gan", text_condition="tokens"), bow)
    assert not uses_tokens(t2i(model="cvae"), bow)  # auto falls back to the pooled feature
    assert not uses_tokens(
        t2i(model="gan"), encoder
    )  # auto keeps the GAN on the pooled feature (it collapses on tokens)
    assert uses_tokens(t2i(model="gan", text_condition="tokens"), encoder)
    with pytest.raises(ValueError, match="layers must be at least 0"):
        TokenCondition(8, 8, layers=-1, queries=4)


def test_cvae_align_term_is_an_infonce_between_each_image_and_its_condition():
    """``align_weight``: the loss adds that weight times a symmetric InfoNCE (temperature 0.1) between the
    encoder's view of each image and its text condition, so the condition learns what tells images apart."""
    from torch.nn import functional as F

    from itm_core.config import RetrainParams
    from itm_core.models.text_to_image import ConditionalVAE

    torch.manual_seed(0)
    base = dict(model="cvae", resolution=16, channels=8, latent_dim=4, cond_dim=8)
    aligned, plain = (
        ConditionalVAE(6, t2i(**base, align_weight=0.5)),
        ConditionalVAE(6, t2i(**base, align_weight=0.0)),
    )
    assert plain.align is None
    plain.load_state_dict({k: v for k, v in aligned.state_dict().items() if not k.startswith("align.")})
    images, text = torch.rand(5, 3, 16, 16) * 2 - 1, torch.randn(5, 6)
    torch.manual_seed(1)
    with_term = aligned.training_loss(images, text, None)
    torch.manual_seed(1)
    without = plain.training_loss(images, text, None)
    with torch.no_grad():
        a = F.normalize(aligned.align[0](aligned.encoder(images)), dim=1)
        b = F.normalize(aligned.align[1](aligned.condition(text)), dim=1)
        logits = a @ b.T / 0.1
        infonce = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert torch.allclose(with_term - without, 0.5 * infonce, atol=1e-5)
    with_term.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aligned.condition.parameters())
    with pytest.raises(ValidationError, match="align_weight"):
        RetrainParams(task="text-to-image", text_to_image={"align_weight": -1})


@pytest.mark.slow
def test_cvae_adversarial_term_trains_a_projection_discriminator_on_samples_from_the_prior(tmp_path):
    """``adv_weight``: a spectrally normalised projection discriminator learns to tell real images with their
    text from samples drawn from the prior and from real images with the wrong text (hinge losses); the
    rest of the cvae adds ``adv_weight`` times the generator's loss. The discriminator has its own
    optimiser: the VAE step never moves it, and it never moves the VAE."""
    from itm_core.config import RetrainParams
    from itm_core.models.text_to_image import (
        ConditionalVAE,
        TextToImage,
        images_to_tensor,
        train_text_to_image,
    )
    from itm_core.models.text_to_image.base import hinge_losses

    # the hinge losses, by hand, with a discriminator simple enough to write down
    def critic(x, c):
        return x.mean(dim=(1, 2, 3)) * c.sum(1)

    real, fake, cond = torch.rand(4, 3, 2, 2), -torch.rand(4, 3, 2, 2), torch.randn(4, 5)
    d_loss, g_loss = hinge_losses(critic, real, fake, cond, mismatch_weight=0.25)
    hinge = lambda v: torch.clamp(v, min=0).mean()  # noqa: E731
    by_hand = (
        hinge(1 - critic(real, cond))
        + 0.75 * hinge(1 + critic(fake, cond))
        + 0.25 * hinge(1 + critic(real, cond.roll(1, dims=0)))
    )
    assert torch.allclose(d_loss, by_hand) and torch.allclose(g_loss, -critic(fake, cond).mean())

    base = dict(model="cvae", resolution=16, channels=8, latent_dim=4, cond_dim=16, batch_size=8)
    assert ConditionalVAE(6, t2i(**base)).critic is None  # off by default: no discriminator is built
    vae = ConditionalVAE(6, t2i(**base, adv_weight=0.1))
    d_params, g_params = vae.discriminator_parameters(), vae.generator_parameters()
    assert d_params and {id(p) for p in d_params}.isdisjoint(id(p) for p in g_params)
    assert len(d_params) + len(g_params) == len(list(vae.parameters()))

    images, names = colour_images(24, seed=0)
    prompts = [f"a {c} square" for c in names]
    encoder = create("encoder", "bow")
    encoder.fit(prompts)
    val_images, val_names = colour_images(2, seed=1)
    features = _text_features(prompts, encoder)
    config = t2i(**base, epochs=25, lr=3e-3, adv_weight=0.1)
    model, result = train_text_to_image(
        {"name": "bow", "options": {}},
        images_to_tensor(images, 16),
        features,
        images_to_tensor(val_images, 16),
        _text_features([f"a {c} square" for c in val_names], encoder),
        config,
    )
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in result.history)
    vae = model.model
    with torch.no_grad():  # the discriminator learned which text goes with which image
        cond = vae.condition(features.text.float())
        x = images_to_tensor(images, 16)
        right, wrong = (
            vae.discriminate(x, cond),
            vae.discriminate(x, cond[torch.randperm(len(cond), generator=torch.Generator().manual_seed(0))]),
        )
        other_colour = torch.tensor(
            [
                a != b
                for a, b in zip(
                    names, [names[i] for i in torch.randperm(len(cond), generator=torch.Generator().manual_seed(0))]
                )
            ]
        )
    assert (right[other_colour] > wrong[other_colour]).float().mean() > 0.8
    model.encoder = encoder
    asked = ["a red square", "a green square", "a blue square"] * 2
    drawn = model.generate(asked, seed=3)
    assert [mean_colour(img) for img in drawn] == [p.split()[1] for p in asked]
    loaded = TextToImage.load(model.save(tmp_path / "adversarial"))
    assert loaded.config.adv_weight == 0.1 and loaded.model.critic is not None
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(loaded.generate(asked, seed=3), drawn))
    with pytest.raises(ValidationError, match="adv_weight"):
        RetrainParams(task="text-to-image", text_to_image={"adv_weight": -0.5})


def test_temperature_scales_the_sampled_noise_of_the_cvae_and_the_gan(tmp_path):
    """``temperature`` multiplies the noise a cvae (its prior's deviation) or a GAN samples: at 0 every
    seed draws the same image (the cvae's prior mean), at 1 seeds differ. It is saved with the model, the
    ``trained-text-to-image`` generator can override it, and bad values are refused by name."""
    from itm_core.config import RetrainParams
    from itm_core.models.text_to_image import MODELS, TextToImage

    encoder = create("encoder", "bow")
    encoder.fit(["a red square", "a blue square"])
    for name, own in (("cvae", {"latent_dim": 4}), ("gan", {"noise_dim": 8})):
        torch.manual_seed(0)
        config = t2i(model=name, resolution=16, cond_dim=8, channels=8, **own)
        model = TextToImage(
            MODELS[name](int(encoder.dim), config).eval(),
            {"name": "bow", "options": {}},
            int(encoder.dim),
            False,
            encoder,
        )
        vary = [np.asarray(model.generate(["a red square"], seed=s)[0], dtype=float) for s in (1, 2)]
        assert np.abs(vary[0] - vary[1]).max() > 0, name
        model.with_temperature(0.0)
        same = [np.asarray(model.generate(["a red square"], seed=s)[0]) for s in (1, 2)]
        assert np.array_equal(*same), name
        if name == "cvae":  # half the temperature, half the spread around the prior's mean, in z
            vae = model.model
            cond = vae.condition(torch.as_tensor(encoder.encode(["a red square"])).float())
            mu, logvar = vae.prior_of(cond)
            for t in (0.5, 1.0):
                model.with_temperature(t)
                zs = []
                vae.decode = lambda z, c, zs=zs: (zs.append(z), torch.zeros(len(z), 3, 16, 16))[1]
                vae.sample(
                    torch.as_tensor(encoder.encode(["a red square"] * 4000)).float(),
                    None,
                    torch.Generator().manual_seed(0),
                )
                spread = ((torch.cat(zs) - mu) / (0.5 * logvar).exp()).std().item()
                assert abs(spread - t) < 0.05 * t
                del vae.decode
            model.with_temperature(0.0)
        folder = model.save(tmp_path / name)
        assert TextToImage.load(folder).config.temperature == 0.0
        loaded = create("generator", "trained-text-to-image", model=str(folder), temperature=1.0)
        assert loaded.model.config.temperature == 1.0
        again = [np.asarray(loaded.generate(["a red square"], seed=s)[0], dtype=float) for s in (1, 2)]
        assert np.abs(again[0] - again[1]).max() > 0, name
    with pytest.raises(ValueError, match="temperature must be 0 or more"):
        model.with_temperature(-1.0)
    with pytest.raises(ValueError, match="trained-text-to-image: option temperature must be 0 or more"):
        create("generator", "trained-text-to-image", model=str(folder), temperature=-0.5)
    diffusion = TextToImage(
        MODELS["cvae"](int(encoder.dim), t2i(model="cvae", resolution=16, cond_dim=8, latent_dim=4, channels=8)),
        {"name": "bow", "options": {}},
        int(encoder.dim),
        False,
        encoder,
    )
    diffusion.model.config = t2i(model="diffusion")
    with pytest.raises(
        ValueError, match="only the cvae and the gan sample with a temperature; this model is a diffusion"
    ):
        diffusion.with_temperature(0.5)
    with pytest.raises(ValidationError, match="temperature"):
        RetrainParams(task="text-to-image", text_to_image={"temperature": -1})


def test_cvae_prior_weight_sets_the_priors_side_of_the_kl_apart_from_the_posteriors():
    """``prior_weight`` (KL balancing): the learned prior is pulled towards the posterior at that weight
    while the posterior is held to the prior at ``kl_weight``; unset, both sides take ``kl_weight``."""
    from itm_core.config import RetrainParams
    from itm_core.models.text_to_image import ConditionalVAE

    torch.manual_seed(0)
    base = dict(model="cvae", resolution=16, channels=8, latent_dim=4, cond_dim=8, kl_weight=0.1, align_weight=0.0)
    plain, balanced = (
        ConditionalVAE(6, t2i(**base, prior_weight=None)),
        ConditionalVAE(6, t2i(**base, prior_weight=1.0)),
    )
    balanced.load_state_dict(plain.state_dict())
    images, text = torch.rand(5, 3, 16, 16) * 2 - 1, torch.randn(5, 6)
    grads = []
    for model in (plain, balanced):
        torch.manual_seed(1)
        model.training_loss(images, text, None).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        if name.startswith("prior."):  # only the KL reaches the prior: ten times the pull
            assert torch.allclose(grads[1][name], 10 * grads[0][name], rtol=1e-4, atol=1e-9), name
        else:  # the encoder, the decoder and the condition's path to them are unchanged
            assert torch.allclose(grads[1][name], grads[0][name], atol=1e-7) or name.startswith("condition."), name
    assert any(grads[0][n].abs().sum() > 0 for n in grads[0] if n.startswith("prior."))
    with pytest.raises(ValidationError, match="prior_weight"):
        RetrainParams(task="text-to-image", text_to_image={"prior_weight": -1})


@pytest.mark.slow
def test_bf16_precision_runs_each_training_forward_under_autocast_and_auto_settles_by_the_cpu(tmp_path, monkeypatch):
    """``precision: bf16`` runs the forward pass of every training step in bfloat16 while the weights
    stay float32, and the cvae still learns its colours; validation and sampling run in float32; ``auto``
    settles on bf16 only where the CPU has bfloat16 instructions; bad values are refused by name."""
    from itm_core.config import RetrainParams
    from itm_core.errors import ParamsError
    from itm_core.models import loop
    from itm_core.models.text_to_image import TextToImage, images_to_tensor, train_text_to_image

    images, names = colour_images(12, seed=0)
    prompts = [f"a {c} square" for c in names]
    encoder = create("encoder", "bow")
    encoder.fit(prompts)
    val_images, val_names = colour_images(2, seed=1)
    val = _text_features([f"a {c} square" for c in val_names], encoder)
    for name, options in (
        ("cvae", dict(channels=16, latent_dim=4, epochs=60, lr=3e-3)),
        ("gan", dict(channels=8, noise_dim=8, epochs=2)),
        (
            "vqvae",
            dict(channels=8, code_dim=8, codebook_size=16, vq_epochs=1, prior_width=16, prior_layers=1, epochs=2),
        ),
    ):
        dtypes: dict[str, set[torch.dtype]] = {"train": set(), "eval": set()}
        original = torch.nn.Conv2d.forward

        def conv_forward(self, x, original=original, dtypes=dtypes):
            out = original(self, x)
            dtypes["train" if self.training else "eval"].add(out.dtype)
            return out

        monkeypatch.setattr(torch.nn.Conv2d, "forward", conv_forward)
        config = t2i(model=name, resolution=16, cond_dim=16, batch_size=12, precision="bf16", **options)
        model, result = train_text_to_image(
            {"name": "bow", "options": {}},
            images_to_tensor(images, 16),
            _text_features(prompts, encoder),
            images_to_tensor(val_images, 16),
            val,
            config,
        )
        monkeypatch.setattr(torch.nn.Conv2d, "forward", original)
        assert dtypes["train"] == {torch.bfloat16}, name  # every training convolution ran in bfloat16 ...
        assert dtypes["eval"] <= {torch.float32} and dtypes["eval"], name  # ... validation in float32
        assert all(p.dtype == torch.float32 for p in model.model.parameters()), name
        assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in result.history), name
        model.encoder = encoder
        if name == "cvae":
            assert result.history[-1]["val_loss"] < result.history[0]["val_loss"] / 2
            asked = ["a red square", "a green square", "a blue square"] * 10
            drawn = model.generate(asked, seed=5)
            assert sum(mean_colour(img) == p.split()[1] for img, p in zip(drawn, asked)) >= 27
            assert TextToImage.load(model.save(tmp_path / name)).config.precision == "bf16"

    for flags, settled in (([], "fp32"), (["avx512_bf16"], "bf16"), (["amx_bf16"], "bf16")):
        monkeypatch.setattr(loop, "cpu_bf16_flags", lambda flags=flags: flags)
        assert loop.settle_precision("auto") == settled
        assert loop.settle_precision("fp32") == "fp32" and loop.settle_precision("bf16") == "bf16"

        # the flow's default: auto for the cvae, fp32 for the others unless asked
        def settled_for(**options: Any) -> str:
            options = RetrainParams(task="text-to-image", text_to_image=options).text_to_image
            return loop.settle_precision(options.precision)

        assert settled_for() == settled
        assert settled_for(model="gan") == "fp32"
        assert settled_for(model="gan", precision="auto") == settled
    with pytest.raises(ParamsError, match="training precision must be auto, fp32 or bf16, got 'fp16'"):
        loop.settle_precision("fp16")
    with pytest.raises(ValidationError, match="precision"):
        t2i(model="cvae", resolution=16, precision="fp16")
    with pytest.raises(ValidationError, match="precision"):
        RetrainParams(task="text-to-image", text_to_image={"precision": "fp16"})


def test_the_flows_per_model_defaults_and_the_options_that_override_them():
    """``retrain`` and ``generation-benchmark`` give each text-to-image model its own defaults (what
    was measured best for it within the time limit) wherever an option is left unset."""
    from itm_core.config import RetrainParams

    def config(**options):
        return RetrainParams(task="text-to-image", text_to_image=options).text_to_image

    expected = {
        "cvae": (120, 32, 1e-3, "auto", 0.3),
        "gan": (120, 64, 2e-4, "fp32", 1.0),
        "vqvae": (60, 64, 1e-3, "fp32", None),
        "diffusion": (14, 64, 1e-3, "fp32", None),
    }
    for model, (epochs, batch_size, lr, precision, temperature) in expected.items():
        c = config(model=model)
        assert (c.epochs, c.batch_size, c.lr, c.precision) == (epochs, batch_size, lr, precision), model
        assert getattr(c, "temperature", None) == temperature, model
        c = config(model=model, epochs=70, batch_size=8, lr=0.01, precision="bf16")
        assert (c.epochs, c.batch_size, c.lr, c.precision) == (70, 8, 0.01, "bf16"), model
        # earlier versions wrote one flat text_to_image for every model, null for "this model's default"
        assert config(model=model, epochs=None, channels=None, temperature=None) == config(model=model), model
    assert config(model="gan", temperature=0.7).temperature == 0.7
    assert config(model="vqvae", guidance_scale=None).guidance_scale == 2.0
    assert config(model="diffusion").guidance_scale == 3.0 and config(model="gan").channels == 32
    # an option of another model is refused in one line that names it and whose it is
    with pytest.raises(ValidationError, match="kl_weight is an option of cvae, not of model 'gan'"):
        config(model="gan", kl_weight=0.5)
    with pytest.raises(ValidationError, match="does not match any of the expected tags: 'cvae', 'gan'"):
        config(model="dalle")
    assert config().model == "cvae" and config().kl_weight == 0.1 and config().prior_weight == 1.0
