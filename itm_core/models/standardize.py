"""Features standardised per dimension with the training set's statistics, as every head and model here
reads its input: the statistics are buffers (``mean``, ``std``), so a saved model carries them."""

from __future__ import annotations

import torch
from torch import nn


class Standardizer(nn.Module):
    """``(x - mean) / std`` with ``mean`` and ``std`` taken from training rows; ``min_std`` keeps a
    dimension that hardly varies from blowing up."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int, min_std: float = 1e-6) -> None:
        super().__init__()
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, rows: torch.Tensor) -> None:
        """Take the statistics of ``rows`` ``(N, dim)`` (a single row: unit deviation)."""
        self.mean.copy_(rows.mean(0))
        self.std.copy_(rows.std(0).clamp(min=self.min_std) if len(rows) > 1 else torch.ones_like(self.std))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardize(x)
