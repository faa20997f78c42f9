"""Data-parallel contrastive training with ``torch.distributed`` (gloo on CPUs, nccl on GPUs).

Launched by ``torchrun`` (or ``accelerate launch``), which sets ``RANK``, ``WORLD_SIZE`` and the
rendezvous address. Each process takes its slice of the global batch; the embeddings of every slice
are gathered *with their gradients* (as open_clip's ``gather_with_grad``), so the contrastive loss
sees the whole global batch as its negatives, exactly as one process would. Every rank computes the
same global loss and the gradients are averaged over the ranks (as ``DistributedDataParallel``
does), which makes the update equal to the one-process update on the same global batch. Rank 0
alone logs and saves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from itm_core.models.matcher import Matcher
from itm_core.models.training import clip_loss


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
            raise ValueError(f"a global batch of {n} does not split over {self.world} processes; use a multiple of {self.world}")
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
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def global_contrastive_loss(matcher: Matcher, image_features: torch.Tensor, text_features: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The symmetric contrastive loss over the global batch, from this rank's slice of features."""
    image = gather_with_grad(matcher.embed_image_features(image_features), ranks)
    text = gather_with_grad(matcher.embed_text_features(text_features), ranks)
    scale = matcher.logit_scale.clamp(max=torch.log(torch.tensor(100.0))).exp()
    return clip_loss(scale * image @ text.T)


def average_gradients(module: torch.nn.Module, ranks: Ranks) -> None:
    """Average every parameter's gradient over the ranks (what ``DistributedDataParallel`` does)."""
    if ranks.world == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ranks.world


def broadcast_parameters(module: torch.nn.Module, ranks: Ranks) -> None:
    """Start every rank from rank 0's weights."""
    if ranks.world > 1:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def train_steps(matcher: Matcher, image: torch.Tensor, text: torch.Tensor, batches: list[torch.Tensor], lr: float, ranks: Ranks) -> list[float]:
    """AdamW steps over ``batches`` (row indices of one global batch each) of aligned ``image`` /
    ``text`` features, data-parallel over ``ranks``; the global loss of each step."""
    broadcast_parameters(matcher, ranks)
    optimizer = torch.optim.AdamW(matcher.parameters(), lr=lr)
    losses = []
    for rows in batches:
        mine = rows[ranks.slice(len(rows))]
        loss = global_contrastive_loss(matcher, image[mine], text[mine], ranks)
        optimizer.zero_grad()
        loss.backward()
        average_gradients(matcher, ranks)
        optimizer.step()
        losses.append(loss.item())
    return losses
