"""The built-in ``retrieval-captioner``: captions an image with the caption-bank entry a matcher scores highest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from itm_core import hookimpl
from itm_core.components import Generator
from plugins import check_setups


class RetrievalCaptioner(Generator):
    """Nearest caption in the joint space of ``matcher``.

    ``matcher``: a model URI (``models:/itm-matcher@champion``) or a saved matcher folder.
    The bank is ``captions`` when given, else every caption of ``bank_split`` of ``bank_dataset``.
    """

    task = "image-to-text"

    def __init__(
        self,
        matcher: str = "models:/itm-matcher@champion",
        captions: Sequence[str] | None = None,
        bank_dataset: str = "shapes",
        bank_options: dict[str, Any] | None = None,
        bank_split: str = "train",
    ) -> None:
        from itm_core import create
        from itm_core.encode.embed import EmbeddingCache
        from itm_core.ops.tracking import load_matcher

        if captions is None:
            captions = create("dataset", bank_dataset, **(bank_options or {})).load().split(bank_split).captions
        self.bank = sorted(set(captions))
        if not self.bank:
            raise ValueError("retrieval-captioner: the caption bank is empty")
        self.matcher = load_matcher(matcher)
        self.bank_emb = self.matcher.embed_texts(self.bank, EmbeddingCache())

    def generate(self, inputs: Sequence[Any], **options: Any) -> list[str]:
        from itm_core.models.retrieval import top_k

        if len(inputs) == 0:
            return []
        _, best = top_k(self.matcher.embed_image_objects(inputs), self.bank_emb, self.matcher.similarity, k=1)
        return [self.bank[i] for i in best[:, 0].tolist()]


@hookimpl
def register_generators(register):
    register(
        "retrieval-captioner",
        RetrievalCaptioner,
        task="image-to-text",
        description="The caption from a caption bank that a matcher scores highest",
        check_options=check_setups.with_matcher(captions=check_setups.CAPTIONS),
    )
