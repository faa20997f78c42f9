"""``diffusion``: a diffusers ``UNet2DConditionModel`` that cross-attends to the text encoder's token
features (its pooled feature when it has no ``encode_tokens``), trained with a ``DDPMScheduler``
(predicting the clean image by default: on a CPU budget of a few hundred steps it gives cleaner samples
than noise prediction) and sampled with ``DDIMScheduler`` and classifier-free guidance.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from itm_core.models.text_to_image.base import (
    Precision,
    TextCondition,
    TextToImageBase,
    TextToImageModel,
    batch_size_field,
    epochs_field,
    guidance_field,
    lr_field,
    precision_field,
)


class DiffusionOptions(TextToImageBase):
    """The UNet, its noise schedule and sampling, and the moving average it samples with."""

    model: Literal["diffusion"] = "diffusion"
    epochs: int = epochs_field(14)
    batch_size: int = batch_size_field(64)
    lr: float = lr_field(1e-3)
    precision: Precision = precision_field("fp32")
    block_channels: list[int] = Field(
        default_factory=lambda: [32, 64, 64], min_length=2, description="UNet channels per resolution level"
    )
    train_timesteps: int = Field(1000, ge=2, description="Noise levels of the DDPM schedule")
    prediction_type: Literal["sample", "epsilon", "v_prediction"] = Field(
        "sample", description="What the UNet predicts: the clean image, the noise, or the velocity"
    )
    uncond_prob: float = Field(
        0.1, ge=0, lt=1, description="Share of training captions dropped, for classifier-free guidance"
    )
    sample_steps: int = Field(30, ge=1, description="DDIM steps when sampling")
    guidance_scale: float = guidance_field(3.0)
    ema_decay: float = Field(0.995, ge=0, lt=1, description="Decay of the moving average of the weights, which samples")


class ConditionalDiffusion(TextToImageModel):
    """A small ``UNet2DConditionModel`` over pixels, cross-attending to the projected text tokens."""

    config: DiffusionOptions

    def __init__(self, text_dim: int, config: DiffusionOptions) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel

        super().__init__()
        self.config = config
        blocks = len(config.block_channels)
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1)
        up = ("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",)
        self.condition = TextCondition(text_dim, config.cond_dim)
        # diffusers' own annotations describe neither the UNet's call nor the schedulers' methods
        self.unet: Any = UNet2DConditionModel(
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
        self.train_scheduler: Any = DDPMScheduler(
            num_train_timesteps=config.train_timesteps,
            beta_schedule="squaredcos_cap_v2",
            prediction_type=config.prediction_type,
        )

    def _cond(self, text: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if text.dim() == 2:
            text, mask = text[:, None], None
        if mask is None:  # a pooled feature: one token, always present
            mask = torch.ones(text.shape[:2], dtype=torch.bool)
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
