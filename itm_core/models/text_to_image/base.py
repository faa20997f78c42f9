"""What the text-to-image models share: the options every model has, how text becomes a condition,
the projection discriminator's parts, and images as tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from itm_core.contract.params import Params
from itm_core.data.pairs import captions_per_image
from itm_core.models.standardize import Standardizer
from itm_core.models.token_reader import TokenReader

CONFIG_FILE = "text_to_image.json"
Precision = Literal["auto", "fp32", "bf16"]


def epochs_field(default: int) -> Any:
    return Field(default, ge=1, description="Epochs, one caption per image each")


def batch_size_field(default: int) -> Any:
    return Field(default, ge=2, description="Images per step")


def lr_field(default: float) -> Any:
    return Field(default, gt=0, description="Peak learning rate")


def precision_field(default: Precision) -> Any:
    return Field(
        default,
        description="bf16: training steps' forward passes run under bfloat16 autocast (validation and sampling "
        "stay float32); auto: bf16 on a CPU with AVX512-BF16 or AMX, fp32 elsewhere (emulated bfloat16 is slower)",
    )


def channels_field(default: int) -> Any:
    return Field(default, ge=4, description="Base number of convolution channels")


def temperature_field(default: float) -> Any:
    return Field(
        default,
        ge=0,
        description="Scale of the noise drawn when sampling; below 1 trades variety for fidelity, as the "
        "truncation trick does",
    )


def guidance_field(default: float) -> Any:
    return Field(default, ge=0, description="Classifier-free guidance scale when sampling")


class TextToImageBase(Params):
    """What every text-to-image model has: the image size, the text condition's width, the training
    budget, and how the ``retrain`` flow samples and scores it. Each model's options add their own
    fields and their own defaults for the schedule (``epochs``, ``batch_size``, ``lr``, ``precision``)."""

    # the model's name, then the schedule: declared by each model with its own defaults
    model: str
    epochs: int
    batch_size: int
    lr: float
    precision: Precision
    resolution: int = Field(32, ge=8, le=128, description="Image side in pixels (a multiple of 8)")
    cond_dim: int = Field(128, ge=8, description="Width the text features are projected to")
    weight_decay: float = Field(0.0, ge=0)
    sample_every: int = Field(
        5, ge=1, description="Log a grid of generated images for fixed validation prompts every this many epochs"
    )
    time_limit_s: float = Field(
        840, ge=0, description="End training after the epoch that passes this many seconds (0: no limit)"
    )
    matcher: str = Field(
        "models:/itm-matcher@champion",
        description="The matcher that scores r_precision and alignment on the test prompts",
    )
    candidates: int = Field(
        100, ge=2, description="r_precision: the prompt is retrieved among this many candidate prompts"
    )
    test_prompts: int = Field(500, ge=1, description="Test images whose first caption is drawn and scored")
    seed: int = Field(0)

    @model_validator(mode="after")
    def _resolution(self) -> TextToImageBase:
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        return self


class VectorConditionOptions(TextToImageBase):
    """The models that read one condition vector per text (cvae, gan): where it comes from."""

    text_condition: Literal["auto", "tokens", "pooled"] = Field(
        "auto",
        description="`tokens`: a small transformer reads the text encoder's token features into the condition "
        "(which attribute goes with which object survives); `pooled`: the encoder's pooled sentence feature; "
        "`auto`: tokens for the cvae when the encoder gives them, pooled for the gan (which collapses on tokens)",
    )
    condition_layers: int = Field(2, ge=0, le=8, description="With tokens: transformer layers over the token features")
    condition_queries: int = Field(
        4, ge=1, le=16, description="With tokens: learned queries that pool the tokens into the condition"
    )


def images_to_tensor(images: Sequence[Any], resolution: int) -> torch.Tensor:
    """PIL images as ``(N, 3, r, r)`` in ``[-1, 1]``."""
    from PIL import Image

    arrays = [
        np.asarray(img.convert("RGB").resize((resolution, resolution), Image.Resampling.BILINEAR), dtype=np.float32)
        for img in images
    ]
    if not arrays:
        return torch.zeros(0, 3, resolution, resolution)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> list[Any]:
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class Standardised(Standardizer):
    """Text features standardised with the training set's per-dimension mean and deviation: the
    pooled features, or every unmasked token."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__(feature_dim, min_std=1e-4)

    def set_text_statistics(self, features: torch.Tensor, mask: torch.Tensor | None) -> None:
        self.set_statistics((features if features.dim() == 2 else features[mask]).float())


class TextCondition(Standardised):
    """Standardised text features projected to ``cond_dim`` one by one: ``(N, cond_dim)`` from pooled
    features, ``(N, L, cond_dim)`` from tokens (their mask is the caller's)."""

    def __init__(self, feature_dim: int, cond_dim: int) -> None:
        super().__init__(feature_dim)
        self.proj = nn.Sequential(nn.Linear(feature_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.standardize(features))


class TokenCondition(Standardised):
    """One condition vector read from the text encoder's standardised token features by a
    :class:`~itm_core.models.token_reader.TokenReader` (``layers`` transformer layers, ``queries``
    attention queries), trained with the model: the condition then says which attribute goes with
    which object, which a pooled sentence feature blurs."""

    def __init__(self, feature_dim: int, cond_dim: int, layers: int, queries: int) -> None:
        super().__init__(feature_dim)
        self.reader = TokenReader(feature_dim, cond_dim, cond_dim, layers, queries)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.reader(self.standardize(features), mask)


def vector_condition(text_dim: int, options: VectorConditionOptions) -> Standardised:
    """The condition of the models that take one vector per text (cvae, gan), as ``text_condition`` says
    (``auto`` is settled by :func:`~itm_core.models.text_to_image.training.train_text_to_image` from the
    features; built directly, it reads pooled ones)."""
    if options.text_condition == "tokens":
        return TokenCondition(text_dim, options.cond_dim, options.condition_layers, options.condition_queries)
    return TextCondition(text_dim, options.cond_dim)


class TextToImageModel(nn.Module):
    """What each model family's module is: a condition read from the text (its statistics set from the
    training features), a training loss on a batch, and samples for a batch of texts."""

    config: TextToImageBase
    condition: Standardised

    def training_loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, text: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


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


@dataclass
class TextFeatures:
    """Per-caption text features (pooled ``(M, D)`` or tokens ``(M, L, D)`` with a mask) and the image
    of each caption."""

    text: torch.Tensor
    mask: torch.Tensor | None
    caption_image: torch.Tensor

    def first_captions(self, n_images: int) -> torch.Tensor:
        """The row of each image's first caption, for images that have one."""
        return torch.tensor(
            [rows[0] for rows in captions_per_image(self.caption_image, n_images) if rows], dtype=torch.long
        )
