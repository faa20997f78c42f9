"""``clip``: either tower of a transformers ``CLIPModel``; both towers embed into one space.

Use ``modality="image"`` and ``modality="text"`` with the same ``model`` for a zero-shot matcher;
``evaluate`` scores such a pair directly (cosine), ``retrain`` trains heads over either tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itm_core import hookimpl
from itm_core.components import Encoder
from plugins import check_setups
from plugins.hub import HUB_METADATA, features, load_pretrained, load_processor, rgb

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "openai/clip-vit-base-patch32"


class ClipEncoder(Encoder):
    """L2-normalised projected CLIP embeddings of images or texts.

    Trainable: ``retrain`` can unlock the tower (``training.unlock``); the fine-tuned tower's
    weights are then the encoder's state, saved with the matcher.
    """

    trainable = True

    def __init__(
        self,
        modality: str = "image",
        model: str = DEFAULT_MODEL,
        revision: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        if modality not in ("image", "text"):
            raise ValueError(f"clip: modality must be 'image' or 'text', got {modality!r}")
        self.modality = modality
        self.model = load_pretrained(CLIPModel, model, revision, dtype, device)
        if modality == "image":
            self.processor = load_processor(AutoImageProcessor, model, revision)
        else:
            self.processor = load_processor(AutoTokenizer, model, revision)
        self.device = device
        self.tuned = False
        self.dim = int(self.model.config.projection_dim)
        self.space = f"clip:{model}@{revision or 'main'}"  # both towers of one checkpoint share it
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def inputs(self, items: Sequence[Any]) -> dict[str, Any]:
        """The model inputs for ``items`` (what CLIPModel's own forward takes)."""
        if self.modality == "image":
            batch = self.processor(images=rgb(items), return_tensors="pt")
        else:
            batch = self.processor(
                list(items), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward_features(self, items: Sequence[Any]) -> torch.Tensor:
        """Normalised embeddings with gradients, on ``device`` (what fine-tuning back-propagates through)."""
        import torch.nn.functional as F

        batch = self.inputs(items)
        if self.modality == "image":
            out = self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.model.dtype))
        else:
            out = self.model.get_text_features(**batch)
        return F.normalize(features(out).float(), dim=-1)

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        import torch

        if len(items) == 0:
            return torch.zeros(0, self.dim)
        with torch.inference_mode():
            return self.forward_features(items).cpu()

    def train_module(self) -> torch.nn.Module:
        """This tower and its projection: the parameters that fine-tuning updates."""
        import torch

        self.tuned = True
        m = self.model
        parts = [m.vision_model, m.visual_projection] if self.modality == "image" else [m.text_model, m.text_projection]
        return torch.nn.ModuleList(parts)

    def get_state(self) -> Any:
        if not self.tuned:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.train_module().state_dict().items()}

    def set_state(self, state: Any) -> None:
        if state is not None:
            self.train_module().load_state_dict(state)
            self.model.eval()


@hookimpl
def register_encoders(register):
    register(
        "clip",
        ClipEncoder,
        modality="image|text",
        dim="projection_dim",
        trainable=False,
        description="CLIP image or text tower (transformers CLIPModel); both share one space",
        checkpoints=[
            "openai/clip-vit-base-patch32",
            "openai/clip-vit-large-patch14",
            "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        ],
        check_options=check_setups.hub("clip", modality="image"),
        **HUB_METADATA,
    )
