"""Reading a text's token features into one vector, for heads and generators that take one vector per text.

A mean-pooled sentence embedding blurs which word goes with which object: on held-out ``shapes``
captions, a probe recovers every object's colour, shape and size from pooled all-MiniLM-L6-v2
features for 63% of them, and for all of them from its token states read by two transformer layers
and four attention queries (``python -m benchmarks.run --only condition``).
"""

from __future__ import annotations

import torch
from torch import nn


class TokenReader(nn.Module):
    """Token features ``(N, L, in_dim)`` projected to ``width``, mixed by ``layers`` transformer layers
    and pooled by ``queries`` learned attention queries into ``(N, out_dim)``; padding (``mask``
    False) is ignored."""

    def __init__(self, in_dim: int, width: int, out_dim: int, layers: int = 2, queries: int = 4) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        if layers < 0 or queries < 1:
            raise ValueError(
                f"token reader: layers must be at least 0 and queries at least 1, got {layers} and {queries}"
            )
        self.proj = nn.Linear(in_dim, width)
        layer = nn.TransformerEncoderLayer(
            width, max(1, width // 32), 2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.mix = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.queries = nn.Parameter(torch.randn(queries, width) * width**-0.5)
        self.out = nn.Sequential(nn.Linear(queries * width, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if tokens.dim() != 3 or mask is None:
            raise ValueError("the token reader needs token features and their mask, (N, L, D) and (N, L)")
        tokens, mask = unpadded(tokens, mask)
        mask = mask.bool()
        h = self.proj(tokens.float())
        if self.mix is not None:
            h = self.mix(h, src_key_padding_mask=~mask)
        weights = (
            (self.queries @ h.transpose(1, 2) * h.shape[-1] ** -0.5)
            .masked_fill(~mask[:, None], float("-inf"))
            .softmax(-1)
        )
        return self.out((weights @ h).flatten(1))


def unpadded(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows and their mask without the padding columns beyond the longest row (which change nothing)."""
    longest = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
    return tokens[:, :longest], mask[:, :longest]
