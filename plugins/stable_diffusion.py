"""``stable-diffusion``: text to image through a diffusers pipeline (``AutoPipelineForText2Image``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from itm_core import hookimpl
from itm_core.components import Generator
from plugins import check_setups
from plugins.hub import check_model_reference, torch_dtype


class StableDiffusion(Generator):
    """Images for prompts; the same ``seed`` gives the same images. Options: ``steps``,
    ``guidance_scale``, ``negative_prompt``, ``height``/``width`` (the model's default when omitted)."""

    task = "text-to-image"

    def __init__(
        self,
        model: str = "stabilityai/stable-diffusion-2-1-base",
        steps: int = 25,
        guidance_scale: float = 7.5,
        negative_prompt: str | None = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        from diffusers import AutoPipelineForText2Image

        if steps < 1:
            raise ValueError(f"stable-diffusion: steps must be at least 1, got {steps}")
        check_model_reference(model)
        try:
            self.pipeline = AutoPipelineForText2Image.from_pretrained(
                model, revision=revision, torch_dtype=torch_dtype(dtype)
            )
        except OSError as exc:
            raise OSError(f"cannot load a diffusers text-to-image pipeline from {model!r}: {exc}") from None
        if hasattr(self.pipeline, "safety_checker") and self.pipeline.safety_checker is None:
            self.pipeline.requires_safety_checker = False
        self.pipeline.to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.device = device
        self.settings = dict(
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
        )
        self.seed = seed

    def generate(self, inputs: Sequence[str], **options: Any) -> list[Any]:
        import torch

        if len(inputs) == 0:
            return []
        settings = {**self.settings, **{k: v for k, v in options.items() if k in self.settings}}
        if settings["negative_prompt"] is not None:
            settings["negative_prompt"] = [settings["negative_prompt"]] * len(inputs)
        generator = torch.Generator(device="cpu").manual_seed(int(options.get("seed", self.seed)))
        return list(self.pipeline(prompt=list(inputs), generator=generator, output_type="pil", **settings).images)


@hookimpl
def register_generators(register):
    register(
        "stable-diffusion",
        StableDiffusion,
        task="text-to-image",
        description="Text to image with a diffusers pipeline (Stable Diffusion and compatible)",
        checkpoints=["stabilityai/stable-diffusion-2-1-base", "runwayml/stable-diffusion-v1-5", "segmind/tiny-sd"],
        requires=["diffusers", "transformers"],
        hub=True,
        check_options=check_setups.hub("stable_diffusion", steps=2, height=32, width=32),
    )
