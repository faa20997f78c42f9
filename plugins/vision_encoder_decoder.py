"""``vision-encoder-decoder``: a captioner from transformers ``VisionEncoderDecoderModel`` (e.g. ViT + GPT-2,
the CNN/ViT encoder + language-model decoder design), with greedy or beam search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from itm_core import hookimpl
from itm_core.components import Generator
from plugins import check_setups
from plugins.hub import HUB_METADATA, load_pretrained, load_processor, rgb


class VisionEncoderDecoderCaptioner(Generator):
    task = "image-to-text"

    def __init__(
        self,
        model: str = "nlpconnect/vit-gpt2-image-captioning",
        max_new_tokens: int = 30,
        num_beams: int = 1,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        if num_beams < 1:
            raise ValueError(f"vision-encoder-decoder: num_beams must be at least 1, got {num_beams}")
        self.model = load_pretrained(VisionEncoderDecoderModel, model, revision, dtype, device)
        self.image_processor = load_processor(AutoImageProcessor, model, revision)
        self.tokenizer = load_processor(AutoTokenizer, model, revision)
        self.max_new_tokens, self.num_beams, self.device = max_new_tokens, num_beams, device

    def generate(self, inputs: Sequence[Any], **options: Any) -> list[str]:
        import torch

        if len(inputs) == 0:
            return []
        pixels = self.image_processor(images=rgb(inputs), return_tensors="pt")["pixel_values"].to(
            self.device, self.model.dtype
        )
        with torch.inference_mode():
            out = self.model.generate(
                pixel_values=pixels,
                max_new_tokens=options.get("max_new_tokens", self.max_new_tokens),
                num_beams=options.get("num_beams", self.num_beams),
                do_sample=False,
            )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


@hookimpl
def register_generators(register):
    register(
        "vision-encoder-decoder",
        VisionEncoderDecoderCaptioner,
        task="image-to-text",
        description="Image encoder + text decoder captioner (VisionEncoderDecoderModel), greedy or beam search",
        checkpoints=["nlpconnect/vit-gpt2-image-captioning", "microsoft/trocr-base-printed"],
        check_options=check_setups.hub("vit_gpt2"),
        **HUB_METADATA,
    )
