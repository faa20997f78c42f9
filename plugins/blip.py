"""BLIP from transformers: ``blip-itm`` (retrieval: contrastive embeddings and the ITM head) and
``blip-caption`` (captioning with ``BlipForConditionalGeneration``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itm_core import hookimpl
from itm_core.components import Encoder, Generator
from itm_core.errors import DataError
from plugins import check_setups
from plugins.hub import HUB_METADATA, load_pretrained, load_processor, rgb

if TYPE_CHECKING:
    import torch


class BlipITM(Encoder):
    """Either tower of ``BlipForImageTextRetrieval`` in its contrastive space (normalised), plus
    :meth:`itm_scores`, the ITM head's match probability for aligned image-text pairs."""

    def __init__(
        self,
        modality: str = "image",
        model: str = "Salesforce/blip-itm-base-coco",
        max_length: int = 35,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

        if modality not in ("image", "text"):
            raise ValueError(f"blip-itm: modality must be 'image' or 'text', got {modality!r}")
        self.modality = modality
        self.model = load_pretrained(BlipForImageTextRetrieval, model, revision, dtype, device)
        self.image_processor = load_processor(AutoImageProcessor, model, revision)
        self.tokenizer = load_processor(AutoTokenizer, model, revision)
        self.device = device
        self.max_length = min(max_length, int(self.model.config.text_config.max_position_embeddings))
        self.dim = int(self.model.config.image_text_hidden_size)

    def _pixels(self, images: Sequence[Any]) -> torch.Tensor:
        return self.image_processor(images=rgb(images), return_tensors="pt")["pixel_values"].to(
            self.device, self.model.dtype
        )

    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {
            "input_ids": batch["input_ids"].to(self.device),
            "attention_mask": batch["attention_mask"].to(self.device),
        }

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if len(items) == 0:
            return torch.zeros(0, self.dim)
        m = self.model
        with torch.inference_mode():
            if self.modality == "image":
                cls = m.vision_model(pixel_values=self._pixels(items)).last_hidden_state[:, 0]
                feat = m.vision_proj(cls)
            else:
                cls = m.text_encoder(**self._tokens(items)).last_hidden_state[:, 0]
                feat = m.text_proj(cls)
        return F.normalize(feat.float(), dim=-1).cpu()

    def itm_scores(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """Probability that ``texts[i]`` matches ``images[i]``, from the ITM head (cross-attention)."""
        import torch

        if len(images) != len(texts):
            raise DataError(
                f"blip-itm: itm_scores needs aligned pairs, got {len(images)} images and {len(texts)} texts"
            )
        with torch.inference_mode():
            logits = self.model(pixel_values=self._pixels(images), use_itm_head=True, **self._tokens(texts)).itm_score
        return logits.float().softmax(-1)[:, 1].cpu()


class BlipCaption(Generator):
    """Captions from ``BlipForConditionalGeneration``: greedy or beam search, optionally after a ``prompt``."""

    task = "image-to-text"

    def __init__(
        self,
        model: str = "Salesforce/blip-image-captioning-base",
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, BlipForConditionalGeneration

        self.model = load_pretrained(BlipForConditionalGeneration, model, revision, dtype, device)
        self.image_processor = load_processor(AutoImageProcessor, model, revision)
        self.tokenizer = load_processor(AutoTokenizer, model, revision)
        self.prompt, self.max_new_tokens, self.num_beams, self.device = prompt, max_new_tokens, num_beams, device

    def generate(self, inputs: Sequence[Any], **options: Any) -> list[str]:
        import torch

        if len(inputs) == 0:
            return []
        pixels = self.image_processor(images=rgb(inputs), return_tensors="pt")["pixel_values"].to(
            self.device, self.model.dtype
        )
        kwargs: dict[str, Any] = {
            "max_new_tokens": options.get("max_new_tokens", self.max_new_tokens),
            "num_beams": options.get("num_beams", self.num_beams),
            "do_sample": False,
        }
        if self.prompt:
            ids = self.tokenizer([self.prompt] * len(inputs), return_tensors="pt")
            kwargs.update(
                input_ids=ids["input_ids"].to(self.device), attention_mask=ids["attention_mask"].to(self.device)
            )
        with torch.inference_mode():
            out = self.model.generate(pixel_values=pixels, **kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


@hookimpl
def register_encoders(register):
    register(
        "blip-itm",
        BlipITM,
        modality="image|text",
        dim="image_text_hidden_size",
        trainable=False,
        description="BLIP retrieval towers (contrastive space) with the ITM head's pair score (itm_scores)",
        checkpoints=["Salesforce/blip-itm-base-coco", "Salesforce/blip-itm-large-flickr"],
        check_options=check_setups.hub("blip_itm", modality="image"),
        **HUB_METADATA,
    )


@hookimpl
def register_generators(register):
    register(
        "blip-caption",
        BlipCaption,
        task="image-to-text",
        description="BLIP captioning (BlipForConditionalGeneration)",
        checkpoints=["Salesforce/blip-image-captioning-base", "Salesforce/blip-image-captioning-large"],
        check_options=check_setups.hub("blip_caption"),
        **HUB_METADATA,
    )
