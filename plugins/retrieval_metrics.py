"""The built-in ``retrieval`` metric: recall@1/5/10, median and mean rank, both directions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itm_core import hookimpl
from itm_core.components import Metric

if TYPE_CHECKING:
    import torch

KS = (1, 5, 10)


class RetrievalMetric(Metric):
    """Inputs: ``image_emb (N, D)``, ``text_emb (M, D)``, ``caption_image`` (image index per caption),
    ``similarity`` (a similarity component; cosine when omitted)."""

    task = "retrieval"

    def __init__(self, ks: Sequence[int] = KS, chunk: int = 1024) -> None:
        self.ks = tuple(ks)
        self.chunk = chunk

    def compute(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        caption_image: Sequence[int],
        similarity: Any = None,
        **_: Any,
    ) -> dict[str, float]:
        from itm_core import create
        from itm_core.models.retrieval import ranks, recall_metrics

        if similarity is None:
            similarity = create("similarity", "cosine")
        return recall_metrics(ranks(image_emb, text_emb, caption_image, similarity, self.chunk), self.ks)


@hookimpl
def register_metrics(register):
    register(
        "retrieval",
        RetrievalMetric,
        task="retrieval",
        keys=[
            "i2t_r1",
            "i2t_r5",
            "i2t_r10",
            "t2i_r1",
            "t2i_r5",
            "t2i_r10",
            "i2t_medr",
            "t2i_medr",
            "i2t_meanr",
            "t2i_meanr",
            "rsum",
        ],
        description="Recall@K, median and mean rank in both directions (COCO/Flickr protocol, chunked)",
    )
