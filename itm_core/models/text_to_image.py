"""Text-to-image models trained from scratch at low resolution, conditioned on a text encoder plugin.

Two models share the conditioning, the training loop and the save format:

- ``diffusion``: a diffusers ``UNet2DConditionModel`` that cross-attends to the text encoder's token
  features (its pooled feature when it has no ``encode_tokens``), trained with a ``DDPMScheduler``
  (predicting the clean image by default: on a CPU budget of a few hundred steps it gives cleaner
  samples than noise prediction) and sampled with ``DDIMScheduler`` and classifier-free guidance.
- ``cvae``: a conditional variational auto-encoder on one text condition vector (a learned prior, a
  FiLM decoder), the fast alternative.
- ``gan``: a DCGAN-style generator with text-conditional batch norm and a spectrally normalised
  projection discriminator, trained with the hinge loss and, as in GAN-INT-CLS, real images paired
  with the wrong text as a second kind of fake; samples come from an exponential moving average of
  the generator.
- ``vqvae``: a VQ-VAE (exponential-moving-average codebook, dead codes restarted) compresses images
  to a grid of codes; then a transformer prior, cross-attending to the text tokens, predicts the codes
  one by one (the DALL-E 1 route), sampled with top-k and classifier-free guidance.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from itm_core.data import DataError
from itm_core.models.saving import load_weights, read_meta, restore_encoder, save_model_folder
from itm_core.models.token_reader import TokenReader
from itm_core.models.training import (
    TrainSchedule,
    captions_per_image,
    clipped_step,
    one_cycle,
    seed_everything,
    settle_precision,
    step_autocast,
)

CONFIG_FILE = "text_to_image.json"


@dataclass
class TextToImageConfig(TrainSchedule):
    model: Literal["diffusion", "cvae", "gan", "vqvae"] = "cvae"
    resolution: int = 32
    cond_dim: int = 128
    # cvae
    latent_dim: int = 32
    channels: int = 64
    kl_weight: float = 1.0
    prior_weight: float | None = None
    align_weight: float = 0.01
    adv_weight: float = 0.0
    # cvae, gan: scale of the sampled noise (below 1 trades variety for fidelity)
    temperature: float = 1.0
    cvae_prior: Literal["learned", "standard"] = "learned"
    cvae_decoder: Literal["film", "deconv"] = "film"
    # cvae, gan: where their one condition vector comes from (auto: tokens for the cvae when the text encoder has them)
    text_condition: Literal["auto", "tokens", "pooled"] = "auto"
    condition_layers: int = 2
    condition_queries: int = 4
    # diffusion
    block_channels: tuple[int, ...] = (32, 64, 64)
    train_timesteps: int = 1000
    prediction_type: str = "sample"
    sample_steps: int = 30
    guidance_scale: float = 3.0
    uncond_prob: float = 0.1
    ema_decay: float = 0.995
    # gan
    noise_dim: int = 64
    mismatch_weight: float = 0.5
    # vqvae
    codebook_size: int = 128
    code_dim: int = 64
    code_stride: int = 4
    vq_epochs: int = 20
    prior_width: int = 256
    prior_layers: int = 4
    prior_dropout: float = 0.2
    top_k: int = 32
    epochs: int = 60


def images_to_tensor(images: Sequence[Any], resolution: int) -> torch.Tensor:
    """PIL images as ``(N, 3, r, r)`` in ``[-1, 1]``."""
    from PIL import Image

    arrays = [
        np.asarray(img.convert("RGB").resize((resolution, resolution), Image.BILINEAR), dtype=np.float32)
        for img in images
    ]
    if not arrays:
        return torch.zeros(0, 3, resolution, resolution)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> list[Any]:
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class Standardised(nn.Module):
    """Text features standardised with the training set's per-dimension mean and deviation."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    def set_statistics(self, features: torch.Tensor, mask: torch.Tensor | None) -> None:
        flat = (features if features.dim() == 2 else features[mask]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-4))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) / self.std


class TextCondition(Standardised):
    """Standardised text features projected to ``cond_dim`` one by one: ``(N, cond_dim)`` from pooled
    features, ``(N, L, cond_dim)`` from tokens (their mask is the caller's)."""

    def __init__(self, feature_dim: int, cond_dim: int) -> None:
        super().__init__(feature_dim)
        self.proj = nn.Sequential(nn.Linear(feature_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.standardise(features))


class TokenCondition(Standardised):
    """One condition vector read from the text encoder's standardised token features by a
    :class:`~itm_core.models.token_reader.TokenReader` (``layers`` transformer layers, ``queries``
    attention queries), trained with the model: the condition then says which attribute goes with
    which object, which a pooled sentence feature blurs."""

    def __init__(self, feature_dim: int, cond_dim: int, layers: int, queries: int) -> None:
        super().__init__(feature_dim)
        self.reader = TokenReader(feature_dim, cond_dim, cond_dim, layers, queries)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.reader(self.standardise(features), mask)


def vector_condition(text_dim: int, config: TextToImageConfig) -> nn.Module:
    """The condition of the models that take one vector per text (cvae, gan), as ``text_condition`` says
    (``auto`` is settled by :func:`train_text_to_image` from the features; built directly, it reads pooled ones)."""
    if config.text_condition == "tokens":
        return TokenCondition(text_dim, config.cond_dim, config.condition_layers, config.condition_queries)
    if config.text_condition in ("pooled", "auto"):
        return TextCondition(text_dim, config.cond_dim)
    raise ValueError(f"{config.model}: text_condition must be auto, tokens or pooled, got {config.text_condition!r}")


def projection_discriminator(widths: list[int], cond_dim: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The parts of a projection discriminator (Miyato and Koyama, 2018) with spectral norm on every
    layer: ``features`` (a 3x3 stem at ``widths[-1]``, then strided 4x4 convolutions down to
    ``widths[0]``), ``critic`` (the unconditional score) and ``project`` (the text's inner product)."""
    sn = nn.utils.spectral_norm
    levels = len(widths) - 1
    down: list[nn.Module] = [sn(nn.Conv2d(3, widths[-1], 3, 1, 1)), nn.LeakyReLU(0.2)]
    for i in range(levels, 0, -1):
        down += [sn(nn.Conv2d(widths[i], widths[i - 1], 4, 2, 1)), nn.LeakyReLU(0.2)]
    return nn.Sequential(*down), sn(nn.Linear(widths[0], 1)), sn(nn.Linear(cond_dim, widths[0]))


def project_score(
    features: nn.Module, critic: nn.Module, project: nn.Module, images: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """``D(x, c) = psi(phi(x)) + <project(c), phi(x)>``, ``phi`` summed over positions."""
    h = features(images).sum(dim=(2, 3))
    return critic(h).squeeze(1) + (project(cond) * h).sum(1)


def hinge_losses(
    discriminate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    fake: torch.Tensor,
    cond: torch.Tensor,
    mismatch_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's hinge loss (real; fake; and, as in GAN-INT-CLS, real images with the wrong
    text as a second kind of fake, weighted ``mismatch_weight``) and the generator's."""
    real_loss = F.relu(1 - discriminate(images, cond.detach())).mean()
    fake_loss = F.relu(1 + discriminate(fake.detach(), cond.detach())).mean()
    wrong = cond.detach().roll(1, dims=0)
    d_loss = (
        real_loss + (1 - mismatch_weight) * fake_loss + mismatch_weight * F.relu(1 + discriminate(images, wrong)).mean()
    )
    return d_loss, -discriminate(fake, cond).mean()


class FiLMUpBlock(nn.Module):
    """Nearest upsampling, then two 3x3 convolutions, each group-normalised and scaled and shifted by the
    text condition (FiLM), with a 1x1 shortcut: the text reaches every resolution of the decoder."""

    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        groups = 8 if cout % 8 == 0 else 1
        self.conv1, self.norm1 = nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(groups, cout)
        self.conv2, self.norm2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(groups, cout)
        self.film = nn.Linear(cond_dim, 4 * cout)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        scale1, shift1, scale2, shift2 = self.film(cond)[:, :, None, None].chunk(4, dim=1)
        h = F.silu(self.norm1(self.conv1(x)) * (1 + scale1) + shift1)
        h = F.silu(self.norm2(self.conv2(h)) * (1 + scale2) + shift2)
        return h + self.shortcut(x)


def gaussian_kl(
    mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))), summed over dimensions, averaged over the batch."""
    return (
        0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1).sum(1)
    ).mean()


class ConditionalVAE(nn.Module):
    """Conv encoder q(z | x, c), decoder p(x | z, c) and a prior p(z | c); ``c`` is the text condition
    (pooled or read from tokens, see ``text_condition``). The decoder is three :class:`FiLMUpBlock` (``cvae_decoder: film``: the text scales and
    shifts every resolution) or three transposed convolutions (``deconv``: the text at the input only).

    With ``cvae_prior: learned`` (Sohn et al., 2015) the prior is a Gaussian predicted from the text,
    and samples draw z from it: what the encoder put into z about the image (where the object is,
    its shape) is then what the text says it should be. With ``standard`` the prior is N(0, I), so a
    sample's z carries whatever the encoder learned to store there, independent of the prompt.

    The KL term holds the posterior to the prior at ``kl_weight`` and, with ``prior_weight`` set, pulls
    the prior towards the posterior at that weight instead (KL balancing): a small ``kl_weight`` then
    leaves z free to keep the image's detail without starving the prior that samples come from.
    Samples draw z at ``temperature`` times the prior's deviation."""

    def __init__(self, text_dim: int, config: TextToImageConfig) -> None:
        super().__init__()
        r, ch, self.config = config.resolution, config.channels, config
        if r % 8:
            raise ValueError(f"cvae: resolution must be a multiple of 8, got {r}")
        self.side = r // 8
        self.condition = vector_condition(text_dim, config)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1),
            nn.SiLU(),
            nn.Conv2d(ch, ch * 2, 4, 2, 1),
            nn.SiLU(),
            nn.Conv2d(ch * 2, ch * 2, 4, 2, 1),
            nn.SiLU(),
            nn.Flatten(),
        )
        flat = ch * 2 * self.side * self.side
        self.to_latent = nn.Linear(flat + config.cond_dim, 2 * config.latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(config.latent_dim + config.cond_dim, flat), nn.SiLU())
        # align_weight: the condition is also trained to pick its image out of the batch (InfoNCE)
        self.align = (
            nn.ModuleList([nn.Linear(flat, config.cond_dim), nn.Linear(config.cond_dim, config.cond_dim)])
            if config.align_weight > 0
            else None
        )
        if config.cvae_prior not in ("learned", "standard"):
            raise ValueError(f"cvae: cvae_prior must be learned or standard, got {config.cvae_prior!r}")
        self.prior = (
            nn.Sequential(
                nn.Linear(config.cond_dim, 2 * config.cond_dim),
                nn.SiLU(),
                nn.Linear(2 * config.cond_dim, 2 * config.latent_dim),
            )
            if config.cvae_prior == "learned"
            else None
        )
        if config.cvae_decoder == "film":
            self.decoder = None
            last = max(8, ch // 2)
            self.up = nn.ModuleList(
                [
                    FiLMUpBlock(ch * 2, ch * 2, config.cond_dim),
                    FiLMUpBlock(ch * 2, ch, config.cond_dim),
                    FiLMUpBlock(ch, last, config.cond_dim),
                ]
            )
            self.to_rgb = nn.Conv2d(last, 3, 3, 1, 1)
        elif config.cvae_decoder == "deconv":
            self.decoder = nn.Sequential(
                nn.ConvTranspose2d(ch * 2, ch * 2, 4, 2, 1),
                nn.SiLU(),
                nn.ConvTranspose2d(ch * 2, ch, 4, 2, 1),
                nn.SiLU(),
                nn.ConvTranspose2d(ch, ch, 4, 2, 1),
                nn.SiLU(),
                nn.Conv2d(ch, 3, 3, 1, 1),
                nn.Tanh(),
            )
        else:
            raise ValueError(f"cvae: cvae_decoder must be film or deconv, got {config.cvae_decoder!r}")
        # adv_weight: a projection discriminator judges samples drawn from the prior against real images
        # (and real images with the wrong text), so that what is sampled is sharp and fits its text
        self.critic = (
            nn.ModuleList(projection_discriminator([ch * 2, ch * 2, ch, max(8, ch // 2)], config.cond_dim))
            if config.adv_weight > 0
            else None
        )

    def prior_of(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z | c)."""
        if self.prior is None:
            zeros = cond.new_zeros(len(cond), self.config.latent_dim)
            return zeros, zeros
        mu, logvar = self.prior(cond).chunk(2, dim=1)
        return mu, logvar.clamp(-8, 0)

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, cond], dim=1)).view(len(z), -1, self.side, self.side)
        if self.decoder is not None:
            return self.decoder(h)
        for block in self.up:
            h = block(h, cond)
        return torch.tanh(self.to_rgb(h))

    def training_loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.losses(images, text, mask)[0]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [] if self.critic is None else list(self.critic.parameters())

    def generator_parameters(self) -> list[nn.Parameter]:
        critic = {id(p) for p in self.discriminator_parameters()}
        return [p for p in self.parameters() if id(p) not in critic]

    def discriminate(self, images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        assert self.critic is not None
        return project_score(*self.critic, images, cond)

    def losses(
        self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None, adversarial: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The VAE loss (per pixel: reconstruction, KL, the align term), then with ``adversarial`` the
        discriminator's hinge loss and the generator's adversarial loss on samples from the prior."""
        cond = self.condition(text, mask)
        seen = self.encoder(images)
        mu, logvar = self.to_latent(torch.cat([seen, cond], dim=1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.decode(z, cond)
        rec = F.mse_loss(recon, images, reduction="none").flatten(1).sum(1).mean()
        prior_mu, prior_logvar = self.prior_of(cond)
        kl = gaussian_kl(mu, logvar, prior_mu, prior_logvar)
        loss = rec + self.config.kl_weight * kl
        if self.config.prior_weight is not None and self.prior is not None:
            # the prior's side of the KL at its own weight (KL balancing): the posterior is held to it at kl_weight
            loss = loss + (self.config.prior_weight - self.config.kl_weight) * gaussian_kl(
                mu.detach(), logvar.detach(), prior_mu, prior_logvar
            )
        loss = loss / images[0].numel()
        if self.align is not None and len(images) > 1:
            logits = F.normalize(self.align[0](seen), dim=1) @ F.normalize(self.align[1](cond), dim=1).T / 0.1
            target = torch.arange(len(images))
            loss = (
                loss
                + self.config.align_weight * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            )
        if not adversarial or self.critic is None:
            return loss, None, None
        fake = self.decode(prior_mu + torch.randn_like(prior_mu) * (0.5 * prior_logvar).exp(), cond)
        d_loss, g_loss = hinge_losses(self.discriminate, images, fake, cond, self.config.mismatch_weight)
        return loss, d_loss, g_loss

    @torch.no_grad()
    def sample(self, text: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        cond = self.condition(text, mask)
        mu, logvar = self.prior_of(cond)
        z = (
            mu
            + self.config.temperature
            * torch.randn(len(text), self.config.latent_dim, generator=generator)
            * (0.5 * logvar).exp()
        )
        return self.decode(z, cond)


class ConditionalDiffusion(nn.Module):
    """A small ``UNet2DConditionModel`` over pixels, cross-attending to the projected text tokens."""

    def __init__(self, text_dim: int, config: TextToImageConfig) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel

        super().__init__()
        self.config = config
        blocks = len(config.block_channels)
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1)
        up = ("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",)
        self.condition = TextCondition(text_dim, config.cond_dim)
        self.unet = UNet2DConditionModel(
            sample_size=config.resolution,
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(config.block_channels),
            layers_per_block=1,
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=config.cond_dim,
            attention_head_dim=8,
            norm_num_groups=min(32, min(config.block_channels) // 2),
        )
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.train_timesteps,
            beta_schedule="squaredcos_cap_v2",
            prediction_type=config.prediction_type,
        )

    def _cond(self, text: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if text.dim() == 2:
            text, mask = text[:, None], torch.ones(len(text), 1, dtype=torch.bool)
        return self.condition(text), mask

    def training_loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        cond, mask = self._cond(text, mask)
        drop = torch.rand(len(images)) < self.config.uncond_prob
        cond = cond.masked_fill(drop[:, None, None], 0.0)
        noise = torch.randn_like(images)
        t = torch.randint(0, self.config.train_timesteps, (len(images),))
        noisy = self.train_scheduler.add_noise(images, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=cond, encoder_attention_mask=mask.float()).sample
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = images
        else:
            target = self.train_scheduler.get_velocity(images, noise, t)
        return F.mse_loss(pred, target)

    @torch.no_grad()
    def sample(self, text: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        from diffusers import DDIMScheduler

        cond, mask = self._cond(text, mask)
        scheduler = DDIMScheduler.from_config(self.train_scheduler.config)
        scheduler.set_timesteps(self.config.sample_steps)
        n, r = len(text), self.config.resolution
        x = torch.randn(n, 3, r, r, generator=generator)
        both_cond = torch.cat([cond, torch.zeros_like(cond)])
        both_mask = torch.cat([mask, mask]).float()
        g = self.config.guidance_scale
        for t in scheduler.timesteps:
            out = self.unet(
                torch.cat([x, x]), t, encoder_hidden_states=both_cond, encoder_attention_mask=both_mask
            ).sample
            cond_out, uncond_out = out.chunk(2)
            x = scheduler.step(uncond_out + g * (cond_out - uncond_out), t, x).prev_sample
        return x


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift are predicted from the condition (as in DF-GAN's affine blocks)."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(cond)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm = ConditionalBatchNorm(cout, cond_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), cond))


class TextGAN(nn.Module):
    """Generator ``G(z, c)`` (4x4 seed, nearest upsampling, text-conditional batch norm) and projection
    discriminator ``D(x, c) = psi(phi(x)) + <embed(c), phi(x)>`` with spectral norm on every layer."""

    def __init__(self, text_dim: int, config: TextToImageConfig) -> None:
        super().__init__()
        r, ch, self.config = config.resolution, config.channels, config
        levels = int(np.log2(r / 4))
        if 4 * 2**levels != r:
            raise ValueError(f"gan: resolution must be 4 times a power of two (16, 32, 64, 128), got {r}")
        self.condition = vector_condition(text_dim, config)
        widths = [min(ch * 8, ch * 2 ** (levels - i)) for i in range(levels + 1)]  # 4x4 ... r x r
        self.seed = nn.Linear(config.noise_dim + config.cond_dim, widths[0] * 16)
        self.seed_norm = ConditionalBatchNorm(widths[0], config.cond_dim)
        self.up = nn.ModuleList([_UpBlock(widths[i], widths[i + 1], config.cond_dim) for i in range(levels)])
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, 1, 1)
        self.features, self.critic, self.project = projection_discriminator(widths, config.cond_dim)
        self.widths = widths

    def averaged(self, name: str) -> bool:
        """The generator's weights are averaged over training; the discriminator's are not."""
        return not name.startswith(("features.", "critic.", "project."))

    def generator_parameters(self) -> list[nn.Parameter]:
        return [
            *self.seed.parameters(),
            *self.seed_norm.parameters(),
            *self.up.parameters(),
            *self.to_rgb.parameters(),
            *self.condition.parameters(),
        ]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.features.parameters(), *self.critic.parameters(), *self.project.parameters()]

    def generate(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.seed(torch.cat([z, cond], dim=1)).view(len(z), self.widths[0], 4, 4)
        h = F.relu(self.seed_norm(h, cond))
        for block in self.up:
            h = block(h, cond)
        return torch.tanh(self.to_rgb(h))

    def discriminate(self, images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return project_score(self.features, self.critic, self.project, images, cond)

    def losses(
        self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hinge losses: the discriminator's (real, fake, real with the wrong text) and the generator's."""
        cond = self.condition(text, mask)
        fake = self.generate(torch.randn(len(images), self.config.noise_dim), cond)
        d_loss, g_loss = hinge_losses(self.discriminate, images, fake, cond, self.config.mismatch_weight)
        return d_loss, g_loss, fake

    def training_loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The discriminator's hinge loss (what validation reports: how well real and fake are told apart)."""
        return self.losses(images, text, mask)[0]

    @torch.no_grad()
    def sample(self, text: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        cond = self.condition(text, mask)
        return self.generate(
            self.config.temperature * torch.randn(len(text), self.config.noise_dim, generator=generator), cond
        )


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, 1, 1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Codebook(nn.Module):
    """Vector quantisation with an exponential moving average codebook (VQ-VAE-2), started on encoder
    outputs of the first training batch; a code chosen on average less than once a step lately is
    restarted on a random encoder output of the batch (as Jukebox does)."""

    def __init__(self, size: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("embed", torch.randn(size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, D, H, W)`` encodings to ``(N, H, W)`` code indices."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.T + self.embed.pow(2).sum(1)
        return distance.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantised encodings (straight-through) and the commitment loss."""
        if self.training and not self.initialised:
            with torch.no_grad():
                flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                self.embed.copy_(flat[torch.randint(0, len(flat), (len(self.embed),))])
                self.embed_sum.copy_(self.embed)
                self.initialised.fill_(True)
        codes = self.codes(z)
        quantised = self.lookup(codes)
        if self.training:
            with torch.no_grad():
                flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                onehot = F.one_hot(codes.flatten(), len(self.embed)).type(flat.dtype)
                self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.embed_sum.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
                n = self.cluster_size.sum()
                size = (self.cluster_size + 1e-5) / (n + len(self.embed) * 1e-5) * n
                self.embed.copy_(self.embed_sum / size[:, None])
                dead = self.cluster_size < 1.0  # on average less than one encoding a step lately
                if dead.any():
                    pick = flat[torch.randint(0, len(flat), (int(dead.sum()),))]
                    self.embed[dead] = pick
                    self.embed_sum[dead] = pick
                    self.cluster_size[dead] = 1.0
        commitment = F.mse_loss(z, quantised.detach())
        return z + (quantised - z).detach(), commitment


class VQPrior(nn.Module):
    """A causal transformer over the code grid (a start token, then the codes in raster order) that
    cross-attends to the text tokens; a learned null text stands in for dropped conditions."""

    def __init__(self, codes: int, length: int, cond_dim: int, width: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(codes + 1, width)
        self.start = codes
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.memory = nn.Linear(cond_dim, width)
        self.null = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerDecoderLayer(
            width, max(1, width // 64), 4 * width, dropout=dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, codes)

    def logits(self, previous: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> torch.Tensor:
        """Next-code logits after each of ``previous`` (``(N, T)``, the start token first)."""
        t = previous.shape[1]
        x = self.tokens(previous) + self.position[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, dtype=x.dtype)
        h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_mask)
        return self.head(self.norm(h))


class VQVAE(nn.Module):
    """Stage one (``phase = "vq"``): the auto-encoder; stage two (``phase = "prior"``): the text-conditional prior."""

    def __init__(self, text_dim: int, config: TextToImageConfig) -> None:
        super().__init__()
        r, ch, stride, self.config = config.resolution, config.channels, config.code_stride, config
        if stride not in (2, 4, 8) or r % stride:
            raise ValueError(f"vqvae: code_stride must be 2, 4 or 8 and divide the resolution {r}, got {stride}")
        self.side = r // stride
        self.phase = "vq"
        self.condition = TextCondition(text_dim, config.cond_dim)
        widths = [ch] + [ch * 2] * (int(np.log2(stride)) - 1)  # per stride-2 level
        down: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, 2, 1)]
        for a, b in zip(widths, widths[1:]):
            down += [nn.ReLU(), nn.Conv2d(a, b, 4, 2, 1)]
        up: list[nn.Module] = []
        for a, b in zip(widths[:0:-1], widths[-2::-1]):
            up += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU()]
        up.append(nn.ConvTranspose2d(widths[0], 3, 4, 2, 1))
        ch = widths[-1]
        self.encoder = nn.Sequential(*down, _Residual(ch), _Residual(ch), nn.ReLU(), nn.Conv2d(ch, config.code_dim, 1))
        self.codebook = Codebook(config.codebook_size, config.code_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, ch, 3, 1, 1), _Residual(ch), _Residual(ch), nn.ReLU(), *up
        )
        self.prior = VQPrior(
            config.codebook_size,
            self.side * self.side,
            config.cond_dim,
            config.prior_width,
            config.prior_layers,
            config.prior_dropout,
        )

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def prior_parameters(self) -> list[nn.Parameter]:
        return [*self.prior.parameters(), *self.condition.parameters()]

    def _memory(self, text: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if text.dim() == 2:
            text, mask = text[:, None], None
        return self.prior.memory(self.condition(text)), None if mask is None else ~mask

    def training_loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.phase == "vq":
            quantised, commitment = self.codebook(self.encoder(images))
            return F.mse_loss(self.decoder(quantised), images) + 0.25 * commitment
        with torch.no_grad():
            codes = self.codebook.codes(self.encoder(images)).flatten(1)
        memory, memory_mask = self._memory(text, mask)
        if self.training:
            drop = torch.rand(len(images)) < 0.1
            memory = torch.where(drop[:, None, None], self.prior.null.expand_as(memory), memory)
            if memory_mask is not None:
                memory_mask = memory_mask & ~drop[:, None]
        previous = torch.cat([torch.full((len(codes), 1), self.prior.start), codes[:, :-1]], dim=1)
        return F.cross_entropy(self.prior.logits(previous, memory, memory_mask).flatten(0, 1), codes.flatten())

    @torch.no_grad()
    def sample(self, text: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        n, g, k = len(text), self.config.guidance_scale, self.config.top_k
        memory, memory_mask = self._memory(text, mask)
        null = self.prior.null.expand(n, memory.shape[1], -1)
        both = torch.cat([memory, null])
        both_mask = None if memory_mask is None else torch.cat([memory_mask, memory_mask])
        codes = torch.full((n, 1), self.prior.start)
        for _ in range(self.side * self.side):
            logits = self.prior.logits(torch.cat([codes, codes]), both, both_mask)[:, -1]
            cond, uncond = logits.chunk(2)
            logits = uncond + g * (cond - uncond) if g != 1 else cond
            if 0 < k < logits.shape[1]:
                floor = logits.topk(k, dim=1).values[:, -1:]
                logits = logits.masked_fill(logits < floor, float("-inf"))
            codes = torch.cat([codes, torch.multinomial(logits.softmax(1), 1, generator=generator)], dim=1)
        grid = codes[:, 1:].view(n, self.side, self.side)
        return self.decoder(self.codebook.lookup(grid)).clamp(-1, 1)


MODELS: dict[str, type[nn.Module]] = {
    "cvae": ConditionalVAE,
    "diffusion": ConditionalDiffusion,
    "gan": TextGAN,
    "vqvae": VQVAE,
}


class Trainer:
    """How one model learns from a batch (``step``, its forward pass under
    ``step_autocast(config.precision)``), with hooks the training loop calls around each epoch;
    ``finish`` may restore the weights of a better epoch and returns that epoch (0: the last)."""

    def start_epoch(self, epoch: int, elapsed: float) -> None:
        pass

    def step(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        raise NotImplementedError

    def end_epoch(self, epoch: int, val_loss: float) -> None:
        pass

    def finish(self) -> int:
        return 0


class LossTrainer(Trainer):
    """One optimiser on one loss (cvae, diffusion) under a one-cycle schedule."""

    def __init__(self, model: nn.Module, config: TextToImageConfig, steps_per_epoch: int) -> None:
        self.model, self.autocast = model, step_autocast(config.precision)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = one_cycle(self.optimizer, config.lr, config.epochs * steps_per_epoch, 0.05)

    def step(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        with self.autocast:
            loss = self.model.training_loss(images, text, mask)
        return clipped_step(loss, self.model, self.optimizer, self.scheduler)


class AdversarialVAETrainer(Trainer):
    """The cvae with ``adv_weight``: one discriminator step (Adam(0, 0.9), as for SN-GANs), then one step
    of the rest on the VAE loss plus ``adv_weight`` times the adversarial loss, under the one-cycle
    schedule; the reported loss is the VAE loss."""

    def __init__(self, model: ConditionalVAE, config: TextToImageConfig, steps_per_epoch: int) -> None:
        self.model, self.weight, self.autocast = model, config.adv_weight, step_autocast(config.precision)
        self.d_params, self.g_params = model.discriminator_parameters(), model.generator_parameters()
        self.d_opt = torch.optim.Adam(self.d_params, lr=config.lr, betas=(0.0, 0.9))
        self.optimizer = torch.optim.AdamW(self.g_params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = one_cycle(self.optimizer, config.lr, config.epochs * steps_per_epoch, 0.05)

    def step(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        with self.autocast:
            vae_loss, d_loss, g_loss = self.model.losses(images, text, mask, adversarial=True)
        assert d_loss is not None and g_loss is not None
        self.d_opt.zero_grad()
        d_loss.backward(inputs=self.d_params, retain_graph=True)
        self.d_opt.step()
        clipped_step(vae_loss + self.weight * g_loss, self.g_params, self.optimizer, self.scheduler)
        return vae_loss.item()


def cvae_trainer(model: ConditionalVAE, config: TextToImageConfig, steps_per_epoch: int) -> Trainer:
    """The cvae learns from its loss alone, or with its discriminator when ``adv_weight`` is above 0."""
    return (AdversarialVAETrainer if config.adv_weight > 0 else LossTrainer)(model, config, steps_per_epoch)


class GanTrainer(Trainer):
    """One discriminator step, then one generator step, each with Adam(0, 0.9) as for SN-GANs; the
    reported loss is the discriminator's."""

    def __init__(self, model: TextGAN, config: TextToImageConfig, steps_per_epoch: int) -> None:
        self.model, self.autocast = model, step_autocast(config.precision)
        self.d_opt = torch.optim.Adam(model.discriminator_parameters(), lr=config.lr, betas=(0.0, 0.9))
        self.g_opt = torch.optim.Adam(model.generator_parameters(), lr=config.lr, betas=(0.0, 0.9))

    def step(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        with self.autocast:
            d_loss, g_loss, _ = self.model.losses(images, text, mask)
        self.d_opt.zero_grad()
        d_loss.backward(inputs=self.model.discriminator_parameters())
        self.d_opt.step()
        self.g_opt.zero_grad()
        g_loss.backward(inputs=self.model.generator_parameters())
        self.g_opt.step()
        return float(d_loss.detach())


class VQTrainer(Trainer):
    """``vq_epochs`` of the auto-encoder (or a third of ``time_limit_s``, whichever ends first), then the
    prior for the remaining epochs, each stage with its own optimiser and one-cycle schedule; the prior
    of the epoch with the lowest validation loss is kept (on a few thousand images it overfits)."""

    def __init__(self, model: VQVAE, config: TextToImageConfig, steps_per_epoch: int) -> None:
        self.model, self.config, self.steps_per_epoch, self.autocast = (
            model,
            config,
            steps_per_epoch,
            step_autocast(config.precision),
        )
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.optimizer = torch.optim.AdamW(model.autoencoder_parameters(), lr=config.lr, weight_decay=0.0)
        self.scheduler = one_cycle(self.optimizer, config.lr, max(1, config.vq_epochs) * steps_per_epoch, 0.05)

    def start_epoch(self, epoch: int, elapsed: float) -> None:
        c = self.config
        if self.model.phase == "vq" and (epoch > c.vq_epochs or (c.time_limit_s and elapsed > c.time_limit_s / 3)):
            self.model.phase = "prior"
            self.optimizer = torch.optim.AdamW(self.model.prior_parameters(), lr=c.lr, weight_decay=c.weight_decay)
            self.scheduler = one_cycle(self.optimizer, c.lr, (c.epochs - epoch + 1) * self.steps_per_epoch, 0.05)

    def step(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        with self.autocast:
            loss = self.model.training_loss(images, text, mask)
        return clipped_step(loss, self.model, self.optimizer, self.scheduler)

    def end_epoch(self, epoch: int, val_loss: float) -> None:
        if self.model.phase == "prior" and (self.best is None or val_loss < self.best[0]):
            state = {
                k: v.detach().clone()
                for k, v in [
                    *self.model.prior.state_dict().items(),
                    *(("condition." + k, v) for k, v in self.model.condition.state_dict().items()),
                ]
            }
            self.best = (val_loss, epoch, state)

    def finish(self) -> int:
        """Restore the best prior; its epoch (0 when the prior never trained)."""
        if self.best is None:
            return 0
        _, epoch, state = self.best
        self.model.prior.load_state_dict({k: v for k, v in state.items() if not k.startswith("condition.")})
        self.model.condition.load_state_dict(
            {k[len("condition.") :]: v for k, v in state.items() if k.startswith("condition.")}
        )
        return epoch


TRAINERS: dict[str, Callable[[Any, TextToImageConfig, int], Trainer]] = {
    "cvae": cvae_trainer,
    "diffusion": LossTrainer,
    "gan": GanTrainer,
    "vqvae": VQTrainer,
}


# The models ``text_condition: auto`` reads tokens for: measured on shapes, the token condition helps the
# cvae (with its align term) and makes the GAN collapse (attr_color 0.946 -> 0.068).
AUTO_TOKENS = ("cvae",)


def uses_tokens(config: TextToImageConfig, text_encoder: Any) -> bool:
    """The diffusion model and the VQ-VAE prior cross-attend to token features when the text encoder
    gives them; the cvae and the GAN read them with ``text_condition: tokens``, which needs them, and
    the cvae with ``auto`` too."""
    has_tokens = hasattr(text_encoder, "encode_tokens")
    if config.model in ("diffusion", "vqvae"):
        return has_tokens
    if config.text_condition == "auto":
        return has_tokens and config.model in AUTO_TOKENS
    if config.text_condition == "tokens" and not has_tokens:
        name = getattr(text_encoder, "name", type(text_encoder).__name__)
        raise ValueError(
            f"{config.model}: text_condition tokens needs token features, and the text encoder {name!r} gives none "
            f"(no encode_tokens); use text_condition: pooled or auto, or a text encoder with tokens such as minilm"
        )
    return config.text_condition == "tokens"


MAX_PROMPT_CHARS = 1000


def check_prompts(prompts: Sequence[Any], limit: int = MAX_PROMPT_CHARS) -> list[str]:
    """Fail on a prompt that is not text, is empty or is longer than ``limit`` characters (naming it);
    return notes on prompts that have letters but none in the Latin script, which the built-in text
    encoders (trained on English) read as unknown words."""
    import unicodedata

    foreign = []
    for n, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DataError(f"prompt {n} is {type(prompt).__name__} {prompt!r}, not text")
        if not prompt.strip():
            raise DataError(f"prompt {n} is empty; describe the image, for example 'a small red circle on the left'")
        if len(prompt) > limit:
            raise DataError(
                f"prompt {n} has {len(prompt)} characters; at most {limit} are accepted (the text encoder reads far fewer)"
            )
        letters = [c for c in prompt if c.isalpha()]
        if letters and not any(unicodedata.name(c, "").startswith("LATIN") for c in letters):
            foreign.append(n)
    if not foreign:
        return []
    shown = ", ".join(map(str, foreign[:10])) + (" ..." if len(foreign) > 10 else "")
    return [
        f"{len(foreign)} prompt(s) ({shown}) have no letters in the Latin script; an English text encoder reads them as unknown words"
    ]


class TextToImage:
    """A trained model with its text encoder: prompts in, PIL images out (the same seed, the same images)."""

    def __init__(
        self,
        model: nn.Module,
        text_encoder_spec: dict[str, Any],
        text_dim: int,
        tokens: bool,
        encoder: Any | None = None,
    ) -> None:
        self.model = model.eval()
        self.text_encoder_spec = text_encoder_spec
        self.text_dim = text_dim
        self.tokens = tokens
        self.encoder = encoder

    @property
    def config(self) -> TextToImageConfig:
        return self.model.config

    def text_features(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.encoder is None:
            raise RuntimeError("this model has no text encoder attached; use TextToImage.load")
        with torch.inference_mode():
            if self.tokens:
                tok, mask = self.encoder.encode_tokens(list(prompts))
                return tok.float(), mask.bool()
            return self.encoder.encode(list(prompts)).float(), None

    def generate_from_features(
        self, text: torch.Tensor, mask: torch.Tensor | None, seed: int = 0, batch_size: int = 64
    ) -> torch.Tensor:
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        parts = [
            self.model.sample(text[s : s + batch_size], None if mask is None else mask[s : s + batch_size], generator)
            for s in range(0, len(text), batch_size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, 3, self.config.resolution, self.config.resolution)

    def with_temperature(self, temperature: float) -> TextToImage:
        """The cvae or GAN sampling its noise at ``temperature`` times its deviation from now on (below 1:
        less variety, closer to what the prompt most often looks like; 0: the prior's mean)."""
        if self.config.model not in ("cvae", "gan"):
            raise ValueError(
                f"temperature: only the cvae and the gan sample with a temperature; this model is a {self.config.model}"
            )
        if not temperature >= 0:
            raise ValueError(f"temperature must be 0 or more, got {temperature!r}")
        self.model.config = replace(self.config, temperature=float(temperature))
        return self

    def generate(self, prompts: Sequence[str], seed: int = 0) -> list[Any]:
        """One image per prompt; an empty, non-text or over-long prompt raises :class:`DataError` naming it."""
        if len(prompts) == 0:
            return []
        check_prompts(prompts)
        text, mask = self.text_features(prompts)
        return tensor_to_images(self.generate_from_features(text, mask, seed))

    def save(self, folder: str | Path) -> Path:
        meta = {
            "kind": "text-to-image",
            "config": asdict(self.config),
            "text_encoder": self.text_encoder_spec,
            "text_dim": self.text_dim,
            "tokens": self.tokens,
        }
        return save_model_folder(folder, CONFIG_FILE, meta, self.model, self.encoder, "text_encoder")

    @classmethod
    def load(cls, folder: str | Path) -> TextToImage:
        meta = read_meta(folder, CONFIG_FILE, "text-to-image model")
        raw = meta["config"]
        # models saved before the learned cvae prior, the FiLM decoder, the token condition and the align term existed
        old = {"cvae_prior": "standard", "cvae_decoder": "deconv", "text_condition": "pooled", "align_weight": 0.0}
        config = TextToImageConfig(**{**old, **raw, "block_channels": tuple(raw["block_channels"])})
        model = load_weights(folder, MODELS[config.model](meta["text_dim"], config))
        return cls(
            model,
            meta["text_encoder"],
            meta["text_dim"],
            meta["tokens"],
            restore_encoder(folder, meta["text_encoder"], "text_encoder"),
        )


@dataclass
class TextFeatures:
    """Per-caption text features (pooled ``(M, D)`` or tokens ``(M, L, D)`` with a mask) and the image of each caption."""

    text: torch.Tensor
    mask: torch.Tensor | None
    caption_image: torch.Tensor

    def first_captions(self, n_images: int) -> torch.Tensor:
        """The row of each image's first caption, for images that have one."""
        return torch.tensor(
            [rows[0] for rows in captions_per_image(self.caption_image, n_images) if rows], dtype=torch.long
        )


@dataclass
class T2ITrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "epochs"
    best_epoch: int = 0


@torch.no_grad()
def validation_loss(
    model: nn.Module, images: torch.Tensor, features: TextFeatures, seed: int, batch_size: int = 256
) -> float:
    """The training loss on validation pairs with fixed noise (one caption per image)."""
    model.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    rows = features.first_captions(len(images))
    losses = []
    for s in range(0, len(rows), batch_size):
        r = rows[s : s + batch_size]
        mask = None if features.mask is None else features.mask[r]
        losses.append(
            model.training_loss(images[features.caption_image[r]], features.text[r].float(), mask).item() * len(r)
        )
    torch.random.set_rng_state(state)
    return float(sum(losses) / max(1, len(rows)))


@torch.no_grad()
def update_average(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``ema`` toward ``model``: parameters and floating buffers named by ``model.averaged(name)``
    (all when it has no such method) by ``1 - decay``; the others are copied, so a GAN's averaged
    generator is judged by the discriminator being trained."""
    averaged = getattr(model, "averaged", lambda name: True)
    for (name, e), p in zip([*ema.named_parameters(), *ema.named_buffers()], [*model.parameters(), *model.buffers()]):
        if averaged(name) and e.dtype.is_floating_point:
            e.lerp_(p, 1 - decay)
        else:
            e.copy_(p)


def train_text_to_image(
    text_encoder_spec: dict[str, Any],
    train_images: torch.Tensor,
    train: TextFeatures,
    val_images: torch.Tensor,
    val: TextFeatures,
    config: TextToImageConfig,
    on_epoch: Callable[[int, dict[str, float], TextToImage], None] | None = None,
) -> tuple[TextToImage, T2ITrainResult]:
    """Train on (image, caption) pairs, one random caption per image each epoch; the diffusion model
    and the GAN keep an exponential moving average of their weights, which is what they sample with.

    ``time_limit_s`` (when above 0) ends training after the epoch that passes it. ``precision``
    ``bf16`` runs each step's forward pass under bfloat16 autocast (validation and sampling stay
    float32); ``auto`` settles on bf16 where the CPU has bfloat16 instructions, else fp32."""
    seed_everything(config.seed)
    start = time.perf_counter()
    tokens = train.text.dim() == 3
    if config.text_condition == "auto":  # settled by the features given (uses_tokens picks them); saved as settled
        config = replace(config, text_condition="tokens" if tokens else "pooled")
    config = replace(config, precision=settle_precision(config.precision))  # saved as settled, like text_condition
    model = MODELS[config.model](train.text.shape[-1], config)
    model.condition.set_statistics(train.text, train.mask)
    ema = copy.deepcopy(model) if config.model in ("diffusion", "gan") else None
    per_image = captions_per_image(train.caption_image, len(train_images))
    usable = [i for i, rows in enumerate(per_image) if rows]
    steps_per_epoch = max(1, len(usable) // config.batch_size)
    trainer = TRAINERS[config.model](model, config, steps_per_epoch)
    rng = random.Random(config.seed)
    result = T2ITrainResult()
    trained = TextToImage(ema if ema is not None else model, text_encoder_spec, train.text.shape[-1], tokens)
    for epoch in range(1, config.epochs + 1):
        trainer.start_epoch(epoch, time.perf_counter() - start)
        model.train()
        order = usable[:]
        rng.shuffle(order)
        losses = []
        for b in range(steps_per_epoch):
            batch = order[b * config.batch_size : (b + 1) * config.batch_size]
            picked = torch.tensor([rng.choice(per_image[i]) for i in batch])
            mask = None if train.mask is None else train.mask[picked]
            loss = trainer.step(train_images[batch], train.text[picked].float(), mask)
            if ema is not None:
                update_average(ema, model, min(config.ema_decay, (1 + result.steps) / (10 + result.steps)))
            result.steps += 1
            losses.append(loss)
        metrics = {
            "train_loss": float(np.mean(losses)),
            "val_loss": validation_loss(trained.model, val_images, val, config.seed),
        }
        if getattr(model, "phase", None) is not None:
            metrics["stage"] = 0.0 if model.phase == "vq" else 1.0
        result.history.append({"epoch": epoch, **metrics})
        result.best_epoch = epoch
        trainer.end_epoch(epoch, metrics["val_loss"])
        if on_epoch is not None:
            on_epoch(epoch, metrics, trained)
        if config.time_limit_s and time.perf_counter() - start > config.time_limit_s:
            result.stopped = "time limit"
            break
    result.best_epoch = trainer.finish() or result.best_epoch
    trained.model.eval()
    result.seconds = time.perf_counter() - start
    return trained, result
