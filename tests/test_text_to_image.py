"""The other text-to-image models (diffusion, GAN, VQ-VAE), sampling temperature, bfloat16 training,
prompt checks and the per-model options, on solid-colour images small enough to train in seconds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from colour_data import colour_images, mean_colour, t2i, text_features
from pydantic import ValidationError

from itm_core import create


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
        text_features(prompts, encoder),
        images_to_tensor(images[:6], 16),
        text_features(prompts[:6], encoder),
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
        text_features(prompts, encoder),
        images_to_tensor(val_images, 16),
        text_features([f"a {c} square" for c in val_names], encoder),
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
    val = text_features([f"a {c} square" for c in val_names], encoder)
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
            text_features(prompts, encoder),
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
            # chance is 10 of 30; bfloat16 kernels differ between CPUs (AMX, AVX512-BF16), and so does the last draw
            assert sum(mean_colour(img) == p.split()[1] for img, p in zip(drawn, asked)) >= 24
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
