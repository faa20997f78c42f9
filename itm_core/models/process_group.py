"""The process group of data-parallel training: this process's place in it (:class:`Ranks`), and the
collective steps a training loop takes with it (gather with gradients, average gradients, share rank
0's decisions). With one process every function here is a no-op, so the loop is the same code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slice(self, n: int) -> slice:
        """The rows of a global batch of ``n`` this rank takes (contiguous, equal shares)."""
        if n % self.world:
            raise ValueError(
                f"a global batch of {n} does not split over {self.world} processes; use a multiple of {self.world}"
            )
        share = n // self.world
        return slice(self.rank * share, (self.rank + 1) * share)


def init_from_env(backend: str | None = None) -> Ranks:
    """Join the process group that ``torchrun`` describes in the environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return Ranks(dist.get_rank(), dist.get_world_size())


def gather_with_grad(x: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order; gradients flow back to each rank's own rows."""
    if ranks.world == 1:
        return x
    return _GatherWithGrad.apply(x, ranks.rank, ranks.world)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient of the gathered tensor and hands each
    rank the rows it contributed (a reduce-scatter), as open_clip's ``gather_with_grad`` does."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def average_gradients(module: torch.nn.Module, ranks: Ranks) -> None:
    """Average every parameter's gradient over the ranks (what ``DistributedDataParallel`` does)."""
    if ranks.world == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ranks.world


def share_decision(values: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """Rank 0's ``values`` on every rank (validation metrics, the stop decision), so that all
    processes keep the same best epoch and stop together even if their clocks or sums differ."""
    if ranks.world == 1:
        return values
    names = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in names], dtype=torch.float64)
    dist.broadcast(tensor, src=0)
    shared = dict(zip(names, tensor.tolist()))
    return {k: shared[k] for k in values}


def broadcast_parameters(module: torch.nn.Module, ranks: Ranks) -> None:
    """Start every rank from rank 0's weights."""
    if ranks.world > 1:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)
