"""Generators trained by the retrain flow: ``trained-captioner`` (task ``captioning``) and
``trained-text-to-image`` (task ``text-to-image``), loaded from MLflow (their champions by default)
or from a saved folder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from itm_core import hookimpl
from itm_core.components import Generator
from plugins import check_setups


class TrainedCaptioner(Generator):
    """Captions from a captioner trained by ``retrain`` (task ``captioning``); ``num_beams=1`` is greedy."""

    task = "image-to-text"

    def __init__(self, model: str = "models:/itm-captioner@champion", num_beams: int = 3) -> None:
        from itm_core.models.captioning import Captioner
        from itm_core.ops.tracking import load_generator_model

        if num_beams < 1:
            raise ValueError(f"trained-captioner: num_beams must be at least 1, got {num_beams}")
        self.captioner = load_generator_model(model)
        if not isinstance(self.captioner, Captioner):
            raise ValueError(
                f"trained-captioner: {model!r} is a text-to-image model, not a captioner; use trained-text-to-image"
            )
        self.num_beams = num_beams

    def generate(self, inputs: Sequence[Any], **options: Any) -> list[str]:
        return self.captioner.caption_images(list(inputs), num_beams=int(options.get("num_beams", self.num_beams)))


class TrainedTextToImage(Generator):
    """Images from a text-to-image model trained by ``retrain`` (task ``text-to-image``); the same
    ``seed`` gives the same images. ``size`` upsamples the low-resolution output for viewing (0: as trained).
    ``temperature`` (cvae, gan) overrides the one the model was trained with: the scale of the noise it samples."""

    task = "text-to-image"

    def __init__(
        self,
        model: str = "models:/itm-text-to-image@champion",
        seed: int = 0,
        size: int = 0,
        temperature: float | None = None,
    ) -> None:
        from itm_core.models.text_to_image import TextToImage
        from itm_core.ops.tracking import load_generator_model

        self.model = load_generator_model(model)
        if not isinstance(self.model, TextToImage):
            raise ValueError(
                f"trained-text-to-image: {model!r} is a captioner, not a text-to-image model; use trained-captioner"
            )
        self.seed, self.size = seed, size
        if temperature is not None:
            try:
                self.model.with_temperature(temperature)
            except ValueError as e:
                raise ValueError(f"trained-text-to-image: option {e}") from None

    def generate(self, inputs: Sequence[str], **options: Any) -> list[Any]:
        from PIL import Image

        images = self.model.generate(list(inputs), seed=int(options.get("seed", self.seed)))
        return [img.resize((self.size, self.size), Image.Resampling.NEAREST) for img in images] if self.size else images


@hookimpl
def register_generators(register):
    register(
        "trained-captioner",
        TrainedCaptioner,
        task="image-to-text",
        description="A GPT-2 captioner trained from scratch by the retrain flow (task captioning)",
        check_options=check_setups.captioner_folder,
    )
    register(
        "trained-text-to-image",
        TrainedTextToImage,
        task="text-to-image",
        description="A conditional VAE or diffusion model trained by the retrain flow (task text-to-image)",
        check_options=check_setups.text_to_image_folder,
    )
