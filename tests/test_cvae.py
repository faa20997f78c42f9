"""The conditional VAE: it draws the prompted colour, its learned prior, FiLM decoder, token condition,
align and adversarial terms, and KL balancing; models saved before an option existed still load."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from colour_data import COLOURS, colour_images, mean_colour, t2i, text_features
from pydantic import ValidationError

from itm_core import create
from itm_core.testing import assert_conforms


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
        text_features(prompts, encoder),
        images_to_tensor(val_images, 16),
        text_features([f"a {c} square" for c in val_names], encoder),
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
    features = text_features(prompts, encoder)
    config = t2i(**base, epochs=25, lr=3e-3, adv_weight=0.1)
    model, result = train_text_to_image(
        {"name": "bow", "options": {}},
        images_to_tensor(images, 16),
        features,
        images_to_tensor(val_images, 16),
        text_features([f"a {c} square" for c in val_names], encoder),
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
