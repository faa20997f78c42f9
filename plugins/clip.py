"""``clip``: either tower of a transformers ``CLIPModel``; both towers embed into one space.

Use ``modality="image"`` and ``modality="text"`` with the same ``model`` for a zero-shot matcher;
``evaluate`` scores such a pair directly (cosine), ``retrain`` trains heads over either tower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from itm_core import hookimpl
from plugins import check_setups
from itm_core.components import Encoder
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

    def __init__(self, modality: str = "image", model: str = DEFAULT_MODEL, revision: str | None = None, dtype: str = "float32", device: str = "cpu") -> None:
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
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self._runtime: str | None = None  # compiled image forward in use: "onnxruntime", "torch" or None
        self._built: dict[str, Any] = {}

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Compiled runtimes of the image tower, best first (CPU, float32); texts stay eager."""
        if self.modality != "image" or str(self.device) != "cpu" or str(self.model.dtype) != "torch.float32":
            return ()
        return ("onnxruntime", "torch")

    def set_compiled(self, on: bool, runtime: str = "torch") -> None:
        """Run the image tower in ``runtime`` (built on first use, from the current weights) or eagerly."""
        import torch

        if on and runtime not in self._built:
            module = _image_features(self.model).eval()
            if runtime == "onnxruntime":
                from itm_core.encode.runtime import OnnxModule

                size = self.processor.crop_size if hasattr(self.processor, "crop_size") else None
                side = int(size["height"]) if isinstance(size, dict) else int(self.model.config.vision_config.image_size)
                example = torch.zeros(2, 3, side, side)
                self._built[runtime] = OnnxModule(module, (example,), ["pixel_values"], {"pixel_values": {0: "batch"}, "out": {0: "batch"}})
            else:
                self._built[runtime] = torch.compile(module, dynamic=False)
        self._runtime = runtime if on else None

    def inputs(self, items: Sequence[Any]) -> dict[str, Any]:
        """The model inputs for ``items`` (what CLIPModel's own forward takes)."""
        if self.modality == "image":
            batch = self.processor(images=rgb(items), return_tensors="pt")
        else:
            batch = self.processor(list(items), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward_features(self, items: Sequence[Any]) -> "torch.Tensor":
        """Normalised embeddings with gradients, on ``device`` (what fine-tuning back-propagates through)."""
        import torch.nn.functional as F

        batch = self.inputs(items)
        if self.modality == "image":
            out = self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.model.dtype))
        else:
            out = self.model.get_text_features(**batch)
        return F.normalize(features(out).float(), dim=-1)

    def encode(self, items: Sequence[Any]) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        if len(items) == 0:
            return torch.zeros(0, self.dim)
        with torch.inference_mode():
            if self._runtime is not None:
                pixels = self.inputs(items)["pixel_values"].to(self.model.dtype)
                return F.normalize(self._built[self._runtime](pixels).float(), dim=-1).cpu()
            return self.forward_features(items).cpu()

    def train_module(self) -> "torch.nn.Module":
        """This tower and its projection: the parameters that fine-tuning updates."""
        import torch

        self.tuned = True
        self._built.clear()  # compiled copies would keep the old weights
        self._runtime = None
        m = self.model
        parts = [m.vision_model, m.visual_projection] if self.modality == "image" else [m.text_model, m.text_projection]
        return torch.nn.ModuleList(parts)

    def __getstate__(self) -> dict[str, Any]:  # compiled copies do not travel (to training processes)
        return {**self.__dict__, "_built": {}, "_runtime": None}

    def get_state(self) -> Any:
        if not self.tuned:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.train_module().state_dict().items()}

    def set_state(self, state: Any) -> None:
        if state is not None:
            self.train_module().load_state_dict(state)
            self.model.eval()


def _image_features(model: Any) -> "torch.nn.Module":
    """``CLIPModel.get_image_features`` as a module's forward (what ONNX export and torch.compile take)."""
    import torch

    class ImageFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return features(self.model.get_image_features(pixel_values=pixel_values))

    return ImageFeatures()


@hookimpl
def register_encoders(register):
    register(
        "clip",
        ClipEncoder,
        modality="image|text",
        dim="projection_dim",
        trainable=False,
        description="CLIP image or text tower (transformers CLIPModel); both share one space",
        checkpoints=["openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"],
        check_options=check_setups.hub("clip", modality="image"),
        **HUB_METADATA,
    )
