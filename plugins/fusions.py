"""Built-in fusion methods, from the simplest to cross-attention.

Each projects image and text features to ``dim`` and combines them; all are trainable modules.
``image_dim`` and ``text_dim`` are the encoders' dimensions (the flows fill them in). Each is factored
(see :class:`itm_core.components.Fusion`): ``fuse`` is ``combine(embed_image(image), embed_text(text))``,
so a head projects each distinct image and text of a batch once, however many pairs it is in.

- ``mean``: the average of the projections
- ``weighted``: ``w * image + (1 - w) * text``, ``w`` fixed or learned
- ``concat-mlp``: an MLP over the concatenated features
- ``gated``: a gated multimodal unit (Arevalo et al., 2017)
- ``bilinear``: low-rank bilinear pooling (MFB: factorised, sum-pooled, power- and L2-normalised)
- ``cross-attention``: text tokens attend to image patches (token-level inputs)
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from itm_core import hookimpl
from itm_core.components import Fusion


class _Factored(nn.Module, Fusion):
    """``fuse`` through the factored parts: what each input gives alone, then the pair's part."""

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def combine(
        self, image: torch.Tensor, text: torch.Tensor, image_mask: Any = None, text_mask: Any = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def fuse(
        self, image: torch.Tensor, text: torch.Tensor, image_mask: Any = None, text_mask: Any = None
    ) -> torch.Tensor:
        return self.combine(self.embed_image(image), self.embed_text(text), image_mask, text_mask)


class _Projected(_Factored):
    def __init__(self, image_dim: int, text_dim: int, dim: int = 256) -> None:
        super().__init__()
        if min(image_dim, text_dim, dim) < 1:
            raise ValueError(
                f"{type(self).__name__}: image_dim, text_dim and dim must be positive, got {image_dim}, {text_dim}, "
                f"{dim}"
            )
        self.image_dim, self.text_dim, self.dim = image_dim, text_dim, dim
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_proj(image)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.text_proj(text)


class MeanFusion(_Projected):
    def combine(
        self, image: torch.Tensor, text: torch.Tensor, image_mask: Any = None, text_mask: Any = None
    ) -> torch.Tensor:
        return (image + text) / 2


class WeightedFusion(_Projected):
    def __init__(
        self, image_dim: int, text_dim: int, dim: int = 256, weight: float = 0.5, learn_weight: bool = True
    ) -> None:
        super().__init__(image_dim, text_dim, dim)
        if not 0.0 < weight < 1.0:
            raise ValueError(f"weighted: weight must lie strictly between 0 and 1, got {weight}")
        logit = torch.logit(torch.tensor(float(weight)))
        if learn_weight:
            self.weight_logit = nn.Parameter(logit)
        else:
            self.register_buffer("weight_logit", logit)

    @property
    def weight(self) -> float:
        return float(torch.sigmoid(self.weight_logit.detach()))

    def combine(
        self, image: torch.Tensor, text: torch.Tensor, image_mask: Any = None, text_mask: Any = None
    ) -> torch.Tensor:
        w = torch.sigmoid(self.weight_logit)
        return w * image + (1 - w) * text


def _split_linear(layer: nn.Linear, x: torch.Tensor, first: int, image: bool) -> torch.Tensor:
    """``layer`` over ``[image; text]`` as the sum of its image part (with the bias) and its text part."""
    if image:
        return F.linear(x, layer.weight[:, :first], layer.bias)
    return F.linear(x, layer.weight[:, first:])


class ConcatMLP(_Factored):
    """An MLP over ``[x_i; x_t]``; its first layer is the sum of an image part and a text part."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, hidden: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.image_dim, self.text_dim, self.dim = image_dim, text_dim, dim
        self.net = nn.Sequential(
            nn.Linear(image_dim + text_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        return _split_linear(cast(nn.Linear, self.net[0]), image, self.image_dim, image=True)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        return _split_linear(cast(nn.Linear, self.net[0]), text, self.image_dim, image=False)

    def combine(
        self, image: torch.Tensor, text: torch.Tensor, image_mask: Any = None, text_mask: Any = None
    ) -> torch.Tensor:
        return self.net[1:](image + text)


class GatedFusion(_Projected):
    """``h = z * tanh(W_i x_i) + (1 - z) * tanh(W_t x_t)`` with ``z = sigmoid(W_z [x_i; x_t])``, per dimension."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256) -> None:
        super().__init__(image_dim, text_dim, dim)
        self.gate = nn.Linear(image_dim + text_dim, dim)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:  # the gate's image part, then the projection
        return torch.cat([_split_linear(self.gate, image, self.image_dim, image=True), self.image_proj(image)], -1)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([_split_linear(self.gate, text, self.image_dim, image=False), self.text_proj(text)], -1)

    def combine(
        self, image: torch.Tensor, text: torch.Tensor, image_mask: Any = None, text_mask: Any = None
    ) -> torch.Tensor:
        (gate_i, image), (gate_t, text) = image.chunk(2, -1), text.chunk(2, -1)
        z = torch.sigmoid(gate_i + gate_t)
        return z * torch.tanh(image) + (1 - z) * torch.tanh(text)


class BilinearFusion(_Factored):
    """Multi-modal factorised bilinear pooling: ``sum_k (U_i x_i * U_t x_t)[:, :, k]``, then signed sqrt and L2."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, rank: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"bilinear: rank must be at least 1, got {rank}")
        self.image_dim, self.text_dim, self.dim, self.rank = image_dim, text_dim, dim, rank
        self.image_proj = nn.Linear(image_dim, dim * rank)
        self.text_proj = nn.Linear(text_dim, dim * rank)
        self.dropout = nn.Dropout(dropout)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_proj(image)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.text_proj(text)

    def combine(
        self, image: torch.Tensor, text: torch.Tensor, image_mask: Any = None, text_mask: Any = None
    ) -> torch.Tensor:
        joint = self.dropout(image * text).view(-1, self.dim, self.rank).sum(-1)
        joint = torch.sign(joint) * torch.sqrt(joint.abs() + 1e-8)
        return F.normalize(joint, dim=-1)


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, text: torch.Tensor, image: torch.Tensor, image_pad: torch.Tensor | None, keep: list | None = None
    ) -> torch.Tensor:
        attended, weights = self.attn(text, image, image, key_padding_mask=image_pad, need_weights=keep is not None)
        if keep is not None:
            keep.append(weights.detach())  # (N, text tokens, image patches), averaged over heads
        text = self.norm1(text + attended)
        return self.norm2(text + self.ff(text))


class CrossAttentionFusion(_Factored):
    """Text tokens (queries) attend to image patches (keys and values) in ``layers`` blocks; the
    result is the mean of the text tokens. Learned position embeddings tell patches apart by place."""

    inputs = "tokens"

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        dim: int = 256,
        layers: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
        max_patches: int = 256,
        max_tokens: int = 512,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention: dim ({dim}) must be divisible by heads ({heads})")
        self.image_dim, self.text_dim, self.dim = image_dim, text_dim, dim
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.image_pos = nn.Parameter(torch.zeros(max_patches, dim))
        self.text_pos = nn.Parameter(torch.zeros(max_tokens, dim))
        nn.init.normal_(self.image_pos, std=0.02)
        nn.init.normal_(self.text_pos, std=0.02)
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, dropout) for _ in range(layers))
        self.attention: list[torch.Tensor] | None = None  # a list to fill: each layer's attention on the next call

    def attention_maps(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """How much the text attends to each image patch: the last layer's attention (averaged over
        heads) averaged over the text's real tokens, ``(N, patches)``; each row sums to 1."""
        self.attention = []
        try:
            with torch.no_grad():
                self.fuse(image, text, image_mask, text_mask)
            weights = self.attention[-1]
        finally:
            self.attention = None
        keep = torch.ones(weights.shape[:2]) if text_mask is None else text_mask.to(weights.dtype)
        return (weights * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)

    @staticmethod
    def _tokens(x: torch.Tensor, what: str) -> None:
        if x.ndim != 3:
            raise ValueError(f"cross-attention fuses token-level features (N, L, D); got {what} {tuple(x.shape)}")

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        self._tokens(image, "image")
        return self.image_proj(image) + self.image_pos[: image.shape[1]]

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        self._tokens(text, "text")
        return self.text_proj(text) + self.text_pos[: text.shape[1]]

    def combine(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if len(text) == 0:  # attention kernels reject empty batches
            return text.new_zeros(0, self.dim)
        img, txt = image, text
        image_pad = None if image_mask is None else ~image_mask.bool()
        for layer in self.layers:
            txt = layer(txt, img, image_pad, self.attention)
        if text_mask is None:
            return txt.mean(1)
        keep = text_mask.unsqueeze(-1).to(txt.dtype)
        return (txt * keep).sum(1) / keep.sum(1).clamp(min=1.0)


@hookimpl
def register_fusions(register):
    common = dict(
        trainable=True,
        options=["image_dim", "text_dim", "dim"],
        check_options={"image_dim": 12, "text_dim": 10, "dim": 8},
    )
    register("mean", MeanFusion, inputs="pooled", description="Average of the projected features", **common)
    register(
        "weighted",
        WeightedFusion,
        inputs="pooled",
        description="Weighted sum of the projections; weight fixed or learned",
        **common,
    )
    register("concat-mlp", ConcatMLP, inputs="pooled", description="MLP over the concatenated features", **common)
    register("gated", GatedFusion, inputs="pooled", description="Gated multimodal unit", **common)
    register("bilinear", BilinearFusion, inputs="pooled", description="Low-rank bilinear pooling (MFB)", **common)
    register(
        "cross-attention",
        CrossAttentionFusion,
        inputs="tokens",
        description="Text tokens attend to image patches",
        **common,
    )
