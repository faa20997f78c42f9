"""Retrieval ranks and recall@K in both directions, computed in chunks.

Several captions per image follow the COCO/Flickr30k protocol (as in CLIP_benchmark): image-to-text
counts a hit at K when any of the image's captions is in the top K; text-to-image when the caption's
image is. Ties count against the model: a negative scoring the same as the positive ranks above it,
so a constant scorer gets the worst ranks rather than perfect ones.

Memory: at most ``chunk x chunk`` scores exist at once; never the whole image x caption matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

KS = (1, 5, 10)


@dataclass
class Ranks:
    """1-based rank of the first correct item for each image query (i2t) and caption query (t2i)."""

    i2t: torch.Tensor
    t2i: torch.Tensor


def ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    caption_image: Sequence[int] | torch.Tensor,
    similarity: Any,
    chunk: int = 1024,
) -> Ranks:
    """Ranks of the ground truth for every query, scored by ``similarity.score`` chunk by chunk."""
    n_img, n_txt = len(image_emb), len(text_emb)
    owner = torch.as_tensor(caption_image, dtype=torch.long)
    if len(owner) != n_txt:
        raise ValueError(f"caption_image has {len(owner)} entries for {n_txt} captions")
    if n_txt and (owner.min() < 0 or owner.max() >= n_img):
        raise ValueError(f"caption_image refers to images outside 0..{n_img - 1}")
    # positives come from the very chunk computations that score the negatives, so a positive and a
    # negative with the same score always compare equal (a separate pairwise call can differ in the
    # last bit and flip near-ties); only the chunks that hold a positive are computed here
    positive = torch.zeros(n_txt)
    for i0 in range(0, n_img, chunk):
        rows_owned = ((owner >= i0) & (owner < i0 + chunk)).nonzero().flatten()
        for t0 in (torch.unique(rows_owned // chunk) * chunk).tolist():
            cols = rows_owned[(rows_owned >= t0) & (rows_owned < t0 + chunk)]
            s = similarity.score(image_emb[i0 : i0 + chunk], text_emb[t0 : t0 + chunk]).float()
            positive[cols] = s[owner[cols] - i0, cols - t0]
    best_positive = torch.full((n_img,), float("-inf")).scatter_reduce(0, owner, positive, reduce="amax")
    above_i2t = torch.zeros(n_img, dtype=torch.long)
    above_t2i = torch.zeros(n_txt, dtype=torch.long)
    for i0 in range(0, n_img, chunk):
        img = image_emb[i0 : i0 + chunk]
        rows = torch.arange(i0, i0 + len(img))
        for t0 in range(0, n_txt, chunk):
            s = similarity.score(img, text_emb[t0 : t0 + chunk]).float()
            negative = owner[t0 : t0 + chunk].unsqueeze(0) != rows.unsqueeze(1)
            above_i2t[i0 : i0 + len(img)] += ((s >= best_positive[i0 : i0 + len(img)].unsqueeze(1)) & negative).sum(1)
            above_t2i[t0 : t0 + s.shape[1]] += ((s >= positive[t0 : t0 + s.shape[1]].unsqueeze(0)) & negative).sum(0)
    return Ranks(i2t=above_i2t + 1, t2i=above_t2i + 1)


def recall_metrics(r: Ranks, ks: Sequence[int] = KS) -> dict[str, float]:
    """``i2t_r{k}``, ``t2i_r{k}`` (fractions), median and mean ranks, and ``rsum`` (sum of recalls, in %)."""
    out: dict[str, float] = {}
    for direction, rk in (("i2t", r.i2t), ("t2i", r.t2i)):
        if len(rk) == 0:
            raise ValueError(f"no {direction} queries to rank")
        for k in ks:
            out[f"{direction}_r{k}"] = float((rk <= k).float().mean())
        out[f"{direction}_medr"] = float(rk.float().median())
        out[f"{direction}_meanr"] = float(rk.float().mean())
    out["rsum"] = 100.0 * sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def top_k(
    query: torch.Tensor, gallery: torch.Tensor, similarity: Any, k: int, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and indices of the ``k`` best gallery items for each query, keeping a running top-k per chunk."""
    k = min(k, len(gallery))
    best_s = torch.full((len(query), 0), float("-inf"))
    best_i = torch.zeros((len(query), 0), dtype=torch.long)
    for g0 in range(0, len(gallery), chunk):
        s = similarity.score(query, gallery[g0 : g0 + chunk]).float()
        idx = torch.arange(g0, g0 + s.shape[1]).expand_as(s)
        cand_s, pos = torch.cat([best_s, s], 1).topk(k, dim=1)
        best_i = torch.cat([best_i, idx], 1).gather(1, pos)
        best_s = cand_s
    return best_s, best_i
