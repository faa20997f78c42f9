"""Retrieval ranks in chunks against the full score matrix."""

from __future__ import annotations

from typing import Any

from benchmarks.common import (
    Row,
    timed,
)


def full_matrix_ranks(img: Any, txt: Any, owner: Any) -> tuple[Any, Any]:
    """The reference: the whole score matrix at once, the same tie rule (ties count against the model)."""
    import torch

    s = img @ txt.T
    positive = s[owner, torch.arange(len(txt))]
    negative = owner.unsqueeze(0) != torch.arange(len(img)).unsqueeze(1)
    best = torch.full((len(img),), float("-inf")).scatter_reduce(0, owner, positive, reduce="amax")
    i2t = ((s >= best.unsqueeze(1)) & negative).sum(1) + 1
    t2i = ((s >= positive.unsqueeze(0)) & negative).sum(0) + 1
    return i2t, t2i


def bench_retrieval(n_img: int) -> list[Row]:
    import torch

    from itm_core import create
    from itm_core.models.retrieval import ranks

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_img, 256), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5 * n_img, 256), dim=1)
    owner = torch.arange(n_img).repeat_interleave(5)
    sim = create("similarity", "dot")
    t_ref, (ri, rt) = timed(lambda: full_matrix_ranks(img, txt, owner))
    t_ch, r = timed(lambda: ranks(img, txt, owner, sim))
    off = int((r.i2t != ri).sum() + (r.t2i != rt).sum())
    return [
        {
            "what": f"retrieval ranks, {n_img} images x {5 * n_img} captions, s",
            "reference": "full score matrix in torch",
            "value": t_ch,
            "ref_value": t_ref,
            "ratio": t_ch / t_ref,
            "target": "identical ranks; time <= 1.0x",
            "note": f"{off} of {len(ri) + len(rt)} ranks differ; scores held at once: 1024 x 1024 "
            f"({1024 * 1024 * 4 / 2**20:.0f} MiB) against {n_img * 5 * n_img * 4 / 2**20:.0f} MiB for the full matrix",
        }
    ]
