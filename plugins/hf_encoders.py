"""``hf-text`` and ``hf-image``: any transformers text or vision backbone as an encoder.

``hf-text`` pools token states (``mean`` over the attention mask, or ``cls``), e.g. BERT or MiniLM.
``hf-image`` pools a vision backbone: ``pooler`` (the model's own pooled output), ``cls`` or
``mean`` over patch tokens (or over the spatial map of a CNN such as ResNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itm_core import hookimpl
from itm_core.components import Encoder
from plugins import check_setups
from plugins.hub import HUB_METADATA, load_pretrained, load_processor, rgb

if TYPE_CHECKING:
    import torch

TEXT_POOLING = ("mean", "cls")
IMAGE_POOLING = ("pooler", "cls", "mean")


class HFTextEncoder(Encoder):
    modality = "text"

    def __init__(
        self,
        model: str = "bert-base-uncased",
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int = 128,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if pooling not in TEXT_POOLING:
            raise ValueError(f"hf-text: pooling must be one of {TEXT_POOLING}, got {pooling!r}")
        self.model = load_pretrained(AutoModel, model, revision, dtype, device)
        self.tokenizer = load_processor(AutoTokenizer, model, revision)
        limits = [
            max_length,
            getattr(self.model.config, "max_position_embeddings", None),
            self.tokenizer.model_max_length,
        ]
        self.max_length = min(int(n) for n in limits if n and n < 1_000_000)  # never past what the model can embed
        self.pooling, self.normalize, self.device = pooling, normalize, device
        self.dim = int(self.model.config.hidden_size)

    def encode(self, items: Sequence[str]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if len(items) == 0:
            return torch.zeros(0, self.dim)
        batch = self.tokenizer(
            list(items), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            states = self.model(**batch).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return (F.normalize(pooled, dim=-1) if self.normalize else pooled).cpu()


class HFImageEncoder(Encoder):
    modality = "image"

    def __init__(
        self,
        model: str = "google/vit-base-patch16-224-in21k",
        pooling: str = "pooler",
        normalize: bool = False,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModel

        if pooling not in IMAGE_POOLING:
            raise ValueError(f"hf-image: pooling must be one of {IMAGE_POOLING}, got {pooling!r}")
        self.model = load_pretrained(AutoModel, model, revision, dtype, device)
        self.processor = load_processor(AutoImageProcessor, model, revision)
        self.pooling, self.normalize, self.device = pooling, normalize, device
        self.dim = 0
        self.dim = int(self._pool([Image.new("RGB", (32, 32))]).shape[1])

    def _pool(self, images: Sequence[Any]) -> torch.Tensor:
        import torch

        pixels = self.processor(images=rgb(images), return_tensors="pt")["pixel_values"].to(
            self.device, self.model.dtype
        )
        with torch.inference_mode():
            out = self.model(pixel_values=pixels)
        states = out.last_hidden_state.float()
        if self.pooling == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise ValueError(
                    f"hf-image: {type(self.model).__name__} has no pooled output; use pooling='cls' or 'mean'"
                )
            return out.pooler_output.float().flatten(1)
        if states.ndim == 4:  # a CNN feature map (N, C, H, W)
            if self.pooling == "cls":
                raise ValueError(
                    f"hf-image: {type(self.model).__name__} has no CLS token; use pooling='mean' or 'pooler'"
                )
            return states.mean(dim=(2, 3))
        return states[:, 0] if self.pooling == "cls" else states[:, 1:].mean(1)

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if len(items) == 0:
            return torch.zeros(0, self.dim)
        pooled = self._pool(items)
        return (F.normalize(pooled, dim=-1) if self.normalize else pooled).cpu()


@hookimpl
def register_encoders(register):
    register(
        "hf-text",
        HFTextEncoder,
        modality="text",
        dim="hidden_size",
        trainable=False,
        description="Any transformers text encoder (BERT, RoBERTa, MiniLM...), mean or CLS pooling",
        checkpoints=["bert-base-uncased", "sentence-transformers/all-mpnet-base-v2", "roberta-base"],
        check_options=check_setups.hub("bert"),
        **HUB_METADATA,
    )
    register(
        "hf-image",
        HFImageEncoder,
        modality="image",
        dim="from the model",
        trainable=False,
        description="Any transformers vision backbone (ViT, DeiT, ResNet, ConvNeXt...), pooled",
        checkpoints=["google/vit-base-patch16-224-in21k", "microsoft/resnet-50", "facebook/dinov2-small"],
        check_options=check_setups.hub("vit"),
        **HUB_METADATA,
    )
