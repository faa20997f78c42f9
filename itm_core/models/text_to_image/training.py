"""Training a text-to-image model on (image, caption) pairs through :func:`itm_core.models.loop.fit`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from itm_core.contract.components import Encoder
from itm_core.errors import ParamsError
from itm_core.models.loop import FitResult, fit, seed_everything, settle_precision
from itm_core.models.text_to_image.base import TextFeatures, TextToImageBase, VectorConditionOptions
from itm_core.models.text_to_image.families import FAMILIES
from itm_core.models.text_to_image.generator import TextToImage

# The models ``text_condition: auto`` reads tokens for: measured on shapes, the token condition helps the
# cvae (with its align term) and makes the GAN collapse (attr_color 0.946 -> 0.068).
AUTO_TOKENS = ("cvae",)


def uses_tokens(options: TextToImageBase, text_encoder: Encoder | Any) -> bool:
    """The diffusion model and the VQ-VAE prior cross-attend to token features when the text encoder
    gives them; the cvae and the GAN read them with ``text_condition: tokens``, which needs them, and
    the cvae with ``auto`` too."""
    has_tokens = hasattr(text_encoder, "encode_tokens")
    if not isinstance(options, VectorConditionOptions):
        return has_tokens
    if options.text_condition == "auto":
        return has_tokens and options.model in AUTO_TOKENS
    if options.text_condition == "tokens" and not has_tokens:
        name = getattr(text_encoder, "name", type(text_encoder).__name__)
        raise ParamsError(
            f"{options.model}: text_condition tokens needs token features, and the text encoder {name!r} gives none "
            "(no encode_tokens); use text_condition: pooled or auto, or a text encoder with tokens such as minilm"
        )
    return options.text_condition == "tokens"


def train_text_to_image(
    text_encoder_spec: dict[str, Any],
    train_images: torch.Tensor,
    train: TextFeatures,
    val_images: torch.Tensor,
    val: TextFeatures,
    options: TextToImageBase,
    on_epoch: Callable[[int, dict[str, float], TextToImage], None] | None = None,
) -> tuple[TextToImage, FitResult]:
    """Train on (image, caption) pairs, one random caption per image each epoch; the diffusion model
    and the GAN keep an exponential moving average of their weights, which is what they sample with.

    ``time_limit_s`` (when above 0) ends training after the epoch that passes it. ``precision``
    ``bf16`` runs each step's forward pass under bfloat16 autocast (validation and sampling stay
    float32); ``auto`` settles on bf16 where the CPU has bfloat16 instructions, else fp32. Both
    ``text_condition: auto`` and ``precision: auto`` are saved as they were settled."""
    seed_everything(options.seed)
    tokens = train.text.dim() == 3
    settled: dict[str, Any] = {"precision": settle_precision(options.precision)}
    if isinstance(options, VectorConditionOptions) and options.text_condition == "auto":
        settled["text_condition"] = "tokens" if tokens else "pooled"
    options = options.model_copy(update=settled)
    family = FAMILIES[options.model]
    model = family.module(train.text.shape[-1], options)
    model.condition.set_text_statistics(train.text, train.mask)
    trainer = family.trainer(model, options, train_images, train, val_images, val)
    trained = TextToImage(trainer.sampler, text_encoder_spec, train.text.shape[-1], tokens)
    result = fit(
        trainer,
        epochs=options.epochs,
        time_limit_s=options.time_limit_s,
        on_epoch=(lambda epoch, metrics: on_epoch(epoch, metrics, trained)) if on_epoch else None,
        desc=options.model,
    )
    trained.model.eval()
    return trained, result
