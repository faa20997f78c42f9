"""The built-in ``retrieval`` metric: recall@1/5/10, median and mean rank, both directions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itm_core import hookimpl
from itm_core.components import Metric

if TYPE_CHECKING:
    import torch

    from itm_core.contract.evidence import UnitScores

KS = (1, 5, 10)


class RetrievalMetric(Metric):
    """Inputs: ``image_emb (N, D)``, ``text_emb (M, D)``, ``caption_image`` (image index per caption),
    ``similarity`` (a similarity component; cosine when omitted)."""

    task = "retrieval"

    def __init__(self, ks: Sequence[int] = KS, chunk: int = 1024) -> None:
        self.ks = tuple(ks)
        self.chunk = chunk

    def ranks(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: Sequence[int], similarity: Any
    ) -> Any:
        from itm_core import create
        from itm_core.models.retrieval import ranks

        if similarity is None:
            similarity = create("similarity", "cosine")
        return ranks(image_emb, text_emb, caption_image, similarity, self.chunk)

    def compute(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        caption_image: Sequence[int],
        similarity: Any = None,
        **_: Any,
    ) -> dict[str, float]:
        from itm_core.models.retrieval import recall_metrics

        return recall_metrics(self.ranks(image_emb, text_emb, caption_image, similarity), self.ks)

    def units(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        caption_image: Sequence[int],
        similarity: Any = None,
        **_: Any,
    ) -> UnitScores:
        """Per test image, its query's hits and its captions' (recalls at 1, 5, 10 and ``rsum``)."""
        from itm_core.judge.intervals import retrieval_scores

        if self.ks != KS:
            raise NotImplementedError(f"per-image scores are given for ks {KS}, not {self.ks}")
        return retrieval_scores(self.ranks(image_emb, text_emb, caption_image, similarity), caption_image)


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
