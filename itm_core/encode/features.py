"""What an encoding pass hands to training and evaluation: the features of a split (images, captions,
which image each caption belongs to), per modality pooled or token-level, and rows of the embedding
cache that are read back only when needed (so features pickle to other processes as a reference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from itm_core.data.pairs import DataError
from itm_core.encode.cache import EmbeddingCache


@dataclass(frozen=True)
class CachedRows:
    """Where a tensor's rows live in an embedding cache: enough to read them back."""

    folder: str
    enc_key: str
    keys: list[str]
    float16: bool = False

    def load(self) -> torch.Tensor:
        cache = EmbeddingCache(self.folder, float16=self.float16)
        out = cache.read_into(
            self.enc_key, cache.lookup(self.enc_key, self.keys), {}, len(self.keys), {"emb": np.dtype(np.float32)}
        )
        if len(self.keys) and "emb" not in out:
            raise DataError(f"the embedding cache {self.folder} no longer holds these rows; encode again")
        return torch.from_numpy(out["emb"]) if self.keys else torch.zeros(0, 0)


@dataclass
class FeatureSplit:
    """Tower features of one split: images ``(N, Di)``, captions ``(M, Dt)``, caption -> image index.

    Features that came from an embedding cache remember where (``sources``) and pickle as that
    reference (a few MB for Flickr30k, not the GB of features), so Prefect can persist and cache the
    encoding step cheaply; unpickling reads the rows back from the cache."""

    image: torch.Tensor
    text: torch.Tensor
    caption_image: torch.Tensor
    sources: tuple[CachedRows, CachedRows] | None = None

    def __reduce__(self) -> Any:
        if self.sources is None:
            return (FeatureSplit, (self.image, self.text, self.caption_image))
        return (_from_sources, (self.sources, self.caption_image))


def _from_sources(sources: tuple[CachedRows, CachedRows], caption_image: torch.Tensor) -> FeatureSplit:
    return FeatureSplit(sources[0].load(), sources[1].load(), caption_image, sources)


@dataclass
class ModalityFeatures:
    """Pooled features ``(N, D)`` and, when asked for, token features ``(N, L, token_dim)`` with their mask."""

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.pooled)

    @staticmethod
    def concat(parts: Sequence[ModalityFeatures]) -> ModalityFeatures:
        """The rows of ``parts`` one after another (token features only if every part has them)."""
        tokens = [p.tokens for p in parts if p.tokens is not None]
        masks = [p.mask for p in parts if p.mask is not None]
        has_tokens = len(tokens) == len(masks) == len(parts)
        return ModalityFeatures(
            torch.cat([p.pooled for p in parts]),
            torch.cat(tokens) if has_tokens else None,
            torch.cat(masks) if has_tokens else None,
        )

    def rows(self, index: Any, tokens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The features of rows ``index``: tokens (as float32) with their mask, or pooled features and ``None``."""
        if tokens:
            if self.tokens is None or self.mask is None:
                raise ValueError("token-level features were not encoded for this input")
            return self.tokens[index].float(), self.mask[index]
        return self.pooled[index], None
