"""Score a dataset split with any matcher: a trained one, or a pair of encoders (directly or through
untrained heads)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from itm_core.contract.components import Encoder
from itm_core.contract.registry import create
from itm_core.data import ImageTextSet
from itm_core.encode.embed import EmbeddingCache, encode
from itm_core.errors import DataError, ParamsError
from itm_core.models.matcher import Matcher


@dataclass
class EncoderPair:
    """Two encoders whose outputs already share a space (e.g. CLIP towers), compared by a similarity."""

    image_encoder: Encoder
    text_encoder: Encoder
    similarity: Any

    def embed_images(self, paths: Sequence[str], cache: EmbeddingCache | None = None) -> torch.Tensor:
        return encode(self.image_encoder, [str(p) for p in paths], cache)

    def embed_texts(self, texts: Sequence[str], cache: EmbeddingCache | None = None) -> torch.Tensor:
        return encode(self.text_encoder, list(texts), cache)

    @torch.no_grad()
    def embed_image_objects(self, images: Sequence[Any]) -> torch.Tensor:
        """Embeddings of PIL images held in memory (not cached)."""
        return self.image_encoder.encode(list(images)).float()


MAX_FIT_IMAGES = 1000


def build_encoder(params: Any, modality: str, train: ImageTextSet | None, fit: bool = True) -> Any:
    """Create an encoder from its params, check its modality, and fit it on ``train`` when it needs
    fitting: on its captions, or on up to ``MAX_FIT_IMAGES`` of its usable images spread evenly.
    ``fit=False`` leaves it unfitted (to be refused by a check that comes next)."""
    enc = create("encoder", params.name, **params.options)
    if enc.modality != modality:
        raise ParamsError(f"encoder {params.name!r} has modality {enc.modality!r}; it cannot be the {modality} encoder")
    if fit and getattr(enc, "requires_fit", False):
        if train is None:
            raise DataError(f"encoder {params.name!r} must be fitted, and the dataset has no train split")
        if modality == "text":
            enc.fit(list(train.captions))
        else:
            from itm_core.encode.loader import read_image

            paths = train.image_paths()
            loaded = [read_image(str(p)) for p in paths[:: max(1, len(paths) // MAX_FIT_IMAGES)][:MAX_FIT_IMAGES]]
            enc.fit([x.value for x in loaded if x.error is None])  # bad images are reported by the encoding pass
    return enc


def build_encoders(image: Any, text: Any, train: ImageTextSet | None, fit: bool = True) -> tuple[Any, Any]:
    """The image and the text encoder of a pair, each built by :func:`build_encoder`."""
    return build_encoder(image, "image", train, fit), build_encoder(text, "text", train, fit)


def image_tower(scorer: Matcher | EncoderPair) -> Any:
    """The image encoder a scorer reads image files with."""
    return scorer.image_encoder if isinstance(scorer, EncoderPair) else scorer._encoder("image")


def evaluate_retrieval(
    scorer: Matcher | EncoderPair, data: ImageTextSet, cache: EmbeddingCache | None = None
) -> dict[str, float]:
    """Retrieval metrics (both directions) of ``scorer`` on every image and caption of ``data``."""
    image_emb = scorer.embed_images([str(p) for p in data.image_paths()], cache)
    text_emb = scorer.embed_texts(data.captions, cache)
    return create("metric", "retrieval").compute(image_emb, text_emb, data.caption_image, similarity=scorer.similarity)


@dataclass
class RetrievalReport:
    """Metrics, per-query ranks and the top ``k`` images of a few caption queries."""

    metrics: dict[str, float]
    ranks: Any
    queries: list[int]
    top_images: list[list[int]]


def retrieval_report(
    scorer: Matcher | EncoderPair,
    data: ImageTextSet,
    cache: EmbeddingCache | None = None,
    examples: int = 4,
    k: int = 5,
    seed: int = 0,
) -> RetrievalReport:
    """:func:`evaluate_retrieval` plus the ranks (for recall@K curves) and the top ``k`` images of
    ``examples`` captions picked with ``seed`` (for a retrieval example grid)."""
    image_emb = scorer.embed_images([str(p) for p in data.image_paths()], cache)
    text_emb = scorer.embed_texts(data.captions, cache)
    return report_from_embeddings(image_emb, text_emb, data, scorer.similarity, examples, k, seed)


def report_from_embeddings(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    data: ImageTextSet,
    similarity: Any,
    examples: int = 4,
    k: int = 5,
    seed: int = 0,
) -> RetrievalReport:
    """The :class:`RetrievalReport` of embeddings already computed for every image and caption of
    ``data``; the ranks are computed once and give the metrics too."""
    import random

    from itm_core.models.retrieval import ranks, recall_metrics, top_k

    r = ranks(image_emb, text_emb, data.caption_image, similarity)
    queries = sorted(random.Random(seed).sample(range(len(data.captions)), min(examples, len(data.captions))))
    _, best = (
        top_k(text_emb[queries], image_emb, similarity, k) if queries else (None, torch.zeros(0, k, dtype=torch.long))
    )
    return RetrievalReport(recall_metrics(r), r, queries, best.tolist())
