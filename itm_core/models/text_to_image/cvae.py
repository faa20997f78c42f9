"""``cvae``: a conditional variational auto-encoder on one text condition vector, the fast model.

The prior is a Gaussian predicted from the text (or N(0, I)), the decoder scales and shifts every
resolution by the text (FiLM), the KL term is balanced between posterior and prior, an optional
contrastive term aligns the condition with its image, and an optional projection discriminator
judges samples drawn from the prior.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from itm_core.models.loop import adam, adamw, clipped_step, one_cycle
from itm_core.models.text_to_image.base import (
    Precision,
    TextToImageModel,
    VectorConditionOptions,
    batch_size_field,
    channels_field,
    epochs_field,
    hinge_losses,
    lr_field,
    precision_field,
    project_score,
    projection_discriminator,
    temperature_field,
    vector_condition,
)
from itm_core.models.text_to_image.trainer import LossTrainer, T2ITrainer


class CVAEOptions(VectorConditionOptions):
    """The conditional VAE: its latent, its prior and decoder, and the weights of its loss terms."""

    model: Literal["cvae"] = "cvae"
    epochs: int = epochs_field(120)
    batch_size: int = batch_size_field(32)
    lr: float = lr_field(1e-3)
    precision: Precision = precision_field("auto")
    channels: int = channels_field(64)
    latent_dim: int = Field(32, ge=2, description="Latent size")
    kl_weight: float = Field(
        0.1,
        ge=0,
        description="Weight of the KL term's hold on the posterior (small: z keeps more of the image, "
        "samples are sharper)",
    )
    prior_weight: float | None = Field(
        1.0,
        ge=0,
        description="With the learned prior: weight of the KL term's pull on the prior (KL balancing; null: "
        "kl_weight), so a small kl_weight leaves z free without starving the prior",
    )
    align_weight: float = Field(
        0.01,
        ge=0,
        description="Weight of a contrastive term that trains the text condition to pick its own image out of "
        "the batch (0: off)",
    )
    adv_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of an adversarial term: a projection discriminator (hinge loss, real images with the "
        "wrong text as extra fakes) judges samples drawn from the prior (0: off)",
    )
    mismatch_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="With adv_weight: share of the discriminator's fake term given to real images with the wrong text",
    )
    temperature: float = temperature_field(0.3)
    cvae_prior: Literal["learned", "standard"] = Field(
        "learned",
        description="`learned`: samples draw z from a Gaussian predicted from the text (the prompt decides where "
        "and what); `standard`: from N(0, I)",
    )
    cvae_decoder: Literal["film", "deconv"] = Field(
        "film",
        description="`film`: upsampling + convolution blocks whose normalisation the text scales and shifts at "
        "every resolution; `deconv`: three transposed convolutions, the text only at the input",
    )


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


class ConditionalVAE(TextToImageModel):
    """Conv encoder q(z | x, c), decoder p(x | z, c) and a prior p(z | c); ``c`` is the text condition
    (pooled or read from tokens, see ``text_condition``). The decoder is three :class:`FiLMUpBlock`
    (``cvae_decoder: film``: the text scales and shifts every resolution) or three transposed
    convolutions (``deconv``: the text at the input only).

    With ``cvae_prior: learned`` (Sohn et al., 2015) the prior is a Gaussian predicted from the text,
    and samples draw z from it: what the encoder put into z about the image (where the object is,
    its shape) is then what the text says it should be. With ``standard`` the prior is N(0, I), so a
    sample's z carries whatever the encoder learned to store there, independent of the prompt.

    The KL term holds the posterior to the prior at ``kl_weight`` and, with ``prior_weight`` set, pulls
    the prior towards the posterior at that weight instead (KL balancing): a small ``kl_weight`` then
    leaves z free to keep the image's detail without starving the prior that samples come from.
    Samples draw z at ``temperature`` times the prior's deviation."""

    config: CVAEOptions

    def __init__(self, text_dim: int, config: CVAEOptions) -> None:
        super().__init__()
        r, ch, self.config = config.resolution, config.channels, config
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
        else:
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
        features, critic, project = self.critic
        return project_score(features, critic, project, images, cond)

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


class AdversarialVAETrainer(T2ITrainer):
    """The cvae with ``adv_weight``: one discriminator step (Adam(0, 0.9), as for SN-GANs), then one step
    of the rest on the VAE loss plus ``adv_weight`` times the adversarial loss, under the one-cycle
    schedule; the reported loss is the VAE loss."""

    def __init__(self, model: ConditionalVAE, options: CVAEOptions, *data: Any) -> None:
        super().__init__(model, options, *data)
        self.vae, self.weight = model, options.adv_weight
        self.d_params, self.g_params = model.discriminator_parameters(), model.generator_parameters()
        self.d_opt = adam(self.d_params, lr=options.lr, betas=(0.0, 0.9))
        self.optimizer = adamw(self.g_params, lr=options.lr, weight_decay=options.weight_decay)
        self.scheduler = one_cycle(self.optimizer, options.lr, options.epochs * self.steps_per_epoch, 0.05)

    def learn(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        with self.autocast:
            vae_loss, d_loss, g_loss = self.vae.losses(images, text, mask, adversarial=True)
        assert d_loss is not None and g_loss is not None
        self.d_opt.zero_grad()
        d_loss.backward(inputs=self.d_params, retain_graph=True)
        self.d_opt.step()
        clipped_step(vae_loss + self.weight * g_loss, self.g_params, self.optimizer, self.scheduler)
        return vae_loss.item()


def cvae_trainer(model: ConditionalVAE, options: CVAEOptions, *data: Any) -> T2ITrainer:
    """The cvae learns from its loss alone, or with its discriminator when ``adv_weight`` is above 0."""
    if options.adv_weight > 0:
        return AdversarialVAETrainer(model, options, *data)
    return LossTrainer(model, options, *data)
