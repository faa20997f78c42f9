"""Reranking a contrastive top-k with an ITM head, as ALBEF and BLIP do.

The reranked score of a candidate is ``ITM logit + weight x contrastive similarity``. Each query's
contrastive top ``k`` is scored by the head once (:func:`candidates`); the ranks under any smaller
``k`` and any weight are then a sort of that small table (:meth:`Candidates.ranks`).
:func:`choose` picks ``k`` and the weight for each direction on the validation split, with "no
reranking" among the choices, so the chosen reranker is never worse than contrastive ranking on the
split it was chosen on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from itm_core.models.retrieval import Ranks, recall_metrics, top_k

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
DIRECTIONS = ("i2t", "t2i")


class _Dot:
    """The contrastive similarity of unit embeddings: their dot product."""

    @staticmethod
    def score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b.T


@dataclass
class Choice:
    """How one direction is reranked: the top ``k`` (0: not reranked) and the contrastive ``weight``."""

    k: int
    weight: float

    def as_metrics(self, direction: str) -> dict[str, float]:
        return {f"rerank_{direction}_k": float(self.k), f"rerank_{direction}_weight": float(self.weight)}


NO_RERANK = Choice(0, 0.0)


@dataclass
class Candidates:
    """Each query's contrastive top-k: gallery rows in contrastive order, their contrastive
    similarities and ITM logits, which of them are correct, and the query's contrastive rank."""

    top: torch.Tensor  # (Q, K) gallery rows
    similarity: torch.Tensor  # (Q, K)
    itm: torch.Tensor  # (Q, K)
    hits: torch.Tensor  # (Q, K) bool
    base: torch.Tensor  # (Q,) 1-based contrastive rank of the first correct item

    def ranks(self, k: int, weight: float | None = None) -> torch.Tensor:
        """Ranks after reordering the top ``k`` by ``itm + weight x similarity`` (``weight`` None: the
        ITM logit alone; ``k`` 0: contrastive ranks). Queries whose answer is outside the top ``k``
        keep their contrastive rank; ties keep the contrastive order."""
        if k <= 0:
            return self.base.clone()
        k = min(k, self.top.shape[1])
        score = self.itm[:, :k] if weight is None else self.itm[:, :k] + weight * self.similarity[:, :k]
        hits = self.hits[:, :k].gather(1, score.argsort(dim=1, descending=True, stable=True))
        inside = hits.any(1)
        out = self.base.clone()
        out[inside] = hits[inside].float().argmax(1) + 1
        return out


@torch.no_grad()
def candidates(head: Any, data: Any, k: int, base: Ranks) -> dict[str, Candidates]:
    """The top ``k`` captions of each image and images of each caption by contrastive similarity,
    each scored by ``head.predict_pairs`` once. ``data`` is a :class:`~itm_core.models.heads.PairSet`."""
    if k < 1:
        raise ValueError(f"rerank_k must be at least 1, got {k}")
    owner = data.caption_image
    n_img, n_txt = len(data.image_emb), len(owner)
    sim_t, top_t = top_k(data.image_emb, data.caption_emb, _Dot, k)  # (N_img, k) captions
    sim_i, top_i = top_k(data.caption_emb, data.image_emb, _Dot, k)  # (N_txt, k) images
    k_t, k_i = top_t.shape[1], top_i.shape[1]
    itm_t = head.predict_pairs(data, torch.arange(n_img).repeat_interleave(k_t), top_t.flatten()).view(n_img, k_t)
    itm_i = head.predict_pairs(data, top_i.flatten(), torch.arange(n_txt).repeat_interleave(k_i)).view(n_txt, k_i)
    return {
        "i2t": Candidates(top_t, sim_t, itm_t.float(), owner[top_t] == torch.arange(n_img).unsqueeze(1), base.i2t),
        "t2i": Candidates(top_i, sim_i, itm_i.float(), top_i == owner.unsqueeze(1), base.t2i),
    }


def _key(r: torch.Tensor) -> tuple[float, ...]:
    return tuple(float((r <= n).float().mean()) for n in (1, 5, 10))


def choose(c: Candidates, ks: Sequence[int] | None = None, weights: Sequence[float] = WEIGHTS) -> Choice:
    """The ``k`` and weight with the best R@1 (then R@5, R@10) on these candidates; "no reranking"
    unless something beats it."""
    k_max = c.top.shape[1]
    ks = sorted({*(2**p for p in range(1, k_max.bit_length()) if 2**p <= k_max), k_max} - {1}) if ks is None else ks
    best, best_key = NO_RERANK, _key(c.base)
    for k in ks:
        for w in weights:
            key = _key(c.ranks(k, w))
            if key > best_key:
                best, best_key = Choice(int(k), float(w)), key
    return best


def choose_both(found: dict[str, Candidates]) -> dict[str, Choice]:
    return {d: choose(found[d]) for d in DIRECTIONS}


def reranked(found: dict[str, Candidates], choice: dict[str, Choice]) -> Ranks:
    """The ranks in both directions under ``choice``."""
    return Ranks(**{d: found[d].ranks(choice[d].k, choice[d].weight) for d in DIRECTIONS})


def itm_only(found: dict[str, Candidates]) -> Ranks:
    """The ranks when the ITM logit alone reorders the whole candidate list."""
    return Ranks(**{d: found[d].ranks(found[d].top.shape[1]) for d in DIRECTIONS})


def rerank_r1(found: dict[str, Candidates], choice: dict[str, Choice]) -> float:
    """Mean R@1 of both directions under ``choice``: what ITM checkpoints are chosen on."""
    r = reranked(found, choice)
    return float(((r.i2t <= 1).float().mean() + (r.t2i <= 1).float().mean()) / 2)


def report(found: dict[str, Candidates], choice: dict[str, Choice]) -> dict[str, float]:
    """``reranked_*`` (the combined score under ``choice``), ``itm_only_*`` (the ITM logit alone over
    the candidates) recall metrics, the choice itself (``rerank_<dir>_k``, ``rerank_<dir>_weight``)
    and what reranking did at rank 1: the share of queries it ``fixed`` (wrong under contrastive
    ranking, right after), ``broke`` (right, then wrong), and the ``ceiling`` (the answer among the
    candidates: the most any reranker of these candidates could reach)."""
    ranked = reranked(found, choice)
    out = {f"reranked_{k}": v for k, v in recall_metrics(ranked).items()}
    out.update({f"itm_only_{k}": v for k, v in recall_metrics(itm_only(found)).items()})
    for d in DIRECTIONS:
        out.update(choice[d].as_metrics(d))
        before, after = found[d].base <= 1, getattr(ranked, d) <= 1
        out[f"rerank_{d}_fixed"] = float((after & ~before).float().mean())
        out[f"rerank_{d}_broke"] = float((before & ~after).float().mean())
        out[f"rerank_{d}_ceiling"] = float(found[d].hits.any(1).float().mean())
    return out
