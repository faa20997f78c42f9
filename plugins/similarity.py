"""Built-in similarity measures: ``cosine`` and ``dot``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from itm_core import hookimpl
from itm_core.components import Similarity

if TYPE_CHECKING:
    import torch


class Cosine(Similarity):
    """Cosine of the angle between embeddings, in [-1, 1]."""

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from torch.nn.functional import normalize

        return normalize(a.float(), dim=-1) @ normalize(b.float(), dim=-1).T

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from torch.nn.functional import normalize

        return (normalize(a.float(), dim=-1) * normalize(b.float(), dim=-1)).sum(-1)


class Dot(Similarity):
    """Inner product scaled by ``scale`` (a learned temperature's inverse, 1 by default)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.scale * (a.float() @ b.float().T)

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.scale * (a.float() * b.float()).sum(-1)


@hookimpl
def register_similarities(register):
    register("cosine", Cosine, description="Cosine similarity")
    register("dot", Dot, description="Dot product with an optional scale (inverse temperature)")
