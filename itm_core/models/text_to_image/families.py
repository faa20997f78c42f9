"""The four text-to-image model families: each one's options, module and trainer, and the one type
that is any of their options (a union on ``model``, so a form shows the chosen model's fields only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from itm_core.models.text_to_image.base import TextToImageBase, TextToImageModel
from itm_core.models.text_to_image.cvae import ConditionalVAE, CVAEOptions, cvae_trainer
from itm_core.models.text_to_image.diffusion import ConditionalDiffusion, DiffusionOptions
from itm_core.models.text_to_image.gan import GANOptions, GanTrainer, TextGAN
from itm_core.models.text_to_image.trainer import LossTrainer, T2ITrainer
from itm_core.models.text_to_image.vqvae import VQVAE, VQTrainer, VQVAEOptions

ModelName = Literal["cvae", "gan", "vqvae", "diffusion"]


@dataclass(frozen=True)
class Family:
    options: type[TextToImageBase]
    module: type[TextToImageModel]
    trainer: Callable[..., T2ITrainer]


FAMILIES: dict[str, Family] = {
    "cvae": Family(CVAEOptions, ConditionalVAE, cvae_trainer),
    "gan": Family(GANOptions, TextGAN, GanTrainer),
    "vqvae": Family(VQVAEOptions, VQVAE, VQTrainer),
    "diffusion": Family(DiffusionOptions, ConditionalDiffusion, LossTrainer),
}
MODELS: dict[str, type[TextToImageModel]] = {name: family.module for name, family in FAMILIES.items()}

# Keys that the flat text_to_image of earlier versions set to null for "this model's default".
PER_MODEL_DEFAULTS = ("epochs", "batch_size", "lr", "precision", "channels", "temperature", "guidance_scale")


def from_flat(value: Any) -> Any:
    """Read ``text_to_image`` as earlier versions wrote it, one flat set of options for every model:
    ``model`` defaults to ``cvae``, a null per-model default is left out, and an option of another
    model is refused in one line that names it and the models it belongs to."""
    if not isinstance(value, dict):
        return value
    value = dict(value)
    model = value.setdefault("model", "cvae")
    family = FAMILIES.get(model)
    if family is None:
        return value  # the union names the models it accepts
    for key in PER_MODEL_DEFAULTS:
        if key in value and value[key] is None:
            del value[key]
    foreign = {
        key: [name for name, f in FAMILIES.items() if key in f.options.model_fields]
        for key in value
        if key not in family.options.model_fields
    }
    misplaced = {key: owners for key, owners in foreign.items() if owners}
    if misplaced:
        named = "; ".join(f"{key} is an option of {' and '.join(owners)}" for key, owners in misplaced.items())
        raise ValueError(f"{named}, not of model {model!r}: leave it out or set model to one of those")
    return value


TextToImageOptions = Annotated[
    CVAEOptions | GANOptions | VQVAEOptions | DiffusionOptions,
    BeforeValidator(from_flat),
    Field(discriminator="model"),
]


# What a key missing from a saved model's config meant when it was saved: the defaults of the
# configuration class before each option existed (older models were trained without these terms).
SAVED_BEFORE = {
    "cvae_prior": "standard",
    "cvae_decoder": "deconv",
    "text_condition": "pooled",
    "align_weight": 0.0,
    "adv_weight": 0.0,
    "prior_weight": None,
    "kl_weight": 1.0,
    "temperature": 1.0,
    "precision": "fp32",
    "channels": 64,
    "guidance_scale": 3.0,
    "weight_decay": 0.0,
    "time_limit_s": 0.0,
}


def saved_options(config: dict[str, Any]) -> TextToImageBase:
    """The options a model was saved with: the keys of its own family (a config of an earlier version
    holds every model's options), with :data:`SAVED_BEFORE` for keys it predates. They are taken as
    saved, not checked again: a trained model loads even where today's checks on training would refuse."""
    options = FAMILIES[config.get("model", "cvae")].options
    known = {k: v for k, v in {**SAVED_BEFORE, **config}.items() if k in options.model_fields}
    return options.model_construct(**known)
