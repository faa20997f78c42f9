"""Text-to-image models trained from scratch at low resolution, conditioned on a text encoder plugin.

Four families share the conditioning (:mod:`.base`), the training loop (:mod:`.trainer`,
:func:`itm_core.models.loop.fit`) and the save format (:mod:`.generator`); each has a module of its
own with its options: ``cvae`` (:mod:`.cvae`, the fast one), ``gan`` (:mod:`.gan`), ``vqvae``
(:mod:`.vqvae`) and ``diffusion`` (:mod:`.diffusion`). :data:`TextToImageOptions` is any of their
options, told apart by ``model``.
"""

from itm_core.models.text_to_image.base import (
    CONFIG_FILE,
    TextFeatures,
    TextToImageBase,
    images_to_tensor,
    tensor_to_images,
)
from itm_core.models.text_to_image.cvae import ConditionalVAE, CVAEOptions, FiLMUpBlock
from itm_core.models.text_to_image.diffusion import ConditionalDiffusion, DiffusionOptions
from itm_core.models.text_to_image.families import FAMILIES, MODELS, ModelName, TextToImageOptions, saved_options
from itm_core.models.text_to_image.gan import GANOptions, TextGAN
from itm_core.models.text_to_image.generator import TextToImage, check_prompts
from itm_core.models.text_to_image.trainer import update_average, validation_loss
from itm_core.models.text_to_image.training import train_text_to_image, uses_tokens
from itm_core.models.text_to_image.vqvae import VQVAE, Codebook, VQVAEOptions

__all__ = [
    "CONFIG_FILE",
    "FAMILIES",
    "MODELS",
    "VQVAE",
    "CVAEOptions",
    "Codebook",
    "ConditionalDiffusion",
    "ConditionalVAE",
    "DiffusionOptions",
    "FiLMUpBlock",
    "GANOptions",
    "ModelName",
    "TextFeatures",
    "TextGAN",
    "TextToImage",
    "TextToImageBase",
    "TextToImageOptions",
    "VQVAEOptions",
    "check_prompts",
    "images_to_tensor",
    "saved_options",
    "tensor_to_images",
    "train_text_to_image",
    "update_average",
    "uses_tokens",
    "validation_loss",
]
