"""``gan``: a DCGAN-style generator with text-conditional batch norm and a spectrally normalised
projection discriminator, trained with the hinge loss and, as in GAN-INT-CLS, real images paired with
the wrong text as a second kind of fake; samples come from an exponential moving average of the generator.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from itm_core.models.loop import adam
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
from itm_core.models.text_to_image.trainer import T2ITrainer


class GANOptions(VectorConditionOptions):
    """The conditional GAN: its noise, its discriminator's mismatch term and its moving average."""

    model: Literal["gan"] = "gan"
    epochs: int = epochs_field(120)
    batch_size: int = batch_size_field(64)
    lr: float = lr_field(2e-4)
    precision: Precision = precision_field("fp32")
    channels: int = channels_field(32)
    noise_dim: int = Field(64, ge=1, description="Size of the noise vector")
    mismatch_weight: float = Field(
        0.5, ge=0, le=1, description="Share of the discriminator's fake term given to real images with the wrong text"
    )
    temperature: float = temperature_field(1.0)
    ema_decay: float = Field(0.995, ge=0, lt=1, description="Decay of the generator's moving average, which samples")

    @model_validator(mode="after")
    def _power_of_two(self) -> GANOptions:
        if self.resolution not in (16, 32, 64, 128):
            raise ValueError(f"gan: resolution must be 16, 32, 64 or 128, got {self.resolution}")
        return self


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


class TextGAN(TextToImageModel):
    """Generator ``G(z, c)`` (4x4 seed, nearest upsampling, text-conditional batch norm) and projection
    discriminator ``D(x, c) = psi(phi(x)) + <embed(c), phi(x)>`` with spectral norm on every layer."""

    config: GANOptions

    def __init__(self, text_dim: int, config: GANOptions) -> None:
        super().__init__()
        r, ch, self.config = config.resolution, config.channels, config
        levels = int(np.log2(r / 4))  # the options allow 16, 32, 64 or 128: four times a power of two
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


class GanTrainer(T2ITrainer):
    """One discriminator step, then one generator step, each with Adam(0, 0.9) as for SN-GANs; the
    reported loss is the discriminator's."""

    def __init__(self, model: TextGAN, options: GANOptions, *data: Any) -> None:
        super().__init__(model, options, *data)
        self.gan = model
        self.d_opt = adam(model.discriminator_parameters(), lr=options.lr, betas=(0.0, 0.9))
        self.g_opt = adam(model.generator_parameters(), lr=options.lr, betas=(0.0, 0.9))

    def learn(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        with self.autocast:
            d_loss, g_loss, _ = self.gan.losses(images, text, mask)
        self.d_opt.zero_grad()
        d_loss.backward(inputs=self.gan.discriminator_parameters())
        self.d_opt.step()
        self.g_opt.zero_grad()
        g_loss.backward(inputs=self.gan.generator_parameters())
        self.g_opt.step()
        return float(d_loss.detach())
