"""A FAISS index over a matcher's joint-space embeddings: what ``itm run index`` builds and ``itm search`` reads.

Embeddings are unit vectors, so inner product is the cosine the matcher scores with. The index kind
follows the collection's size unless it is set:

- ``flat`` (``IndexFlatIP``): exact, below ``exact_below`` items;
- ``hnsw`` (``IndexHNSWFlat``, inner product): a graph, below ``hnsw_below`` items;
- ``ivfpq`` (``IndexIVFPQ`` with an exact re-ranking of the ``refine`` x k best by ``IndexRefineFlat``):
  inverted lists of product-quantised codes for larger collections.

A saved index is a folder: ``index.faiss``, ``items.parquet`` (row -> item) and ``index.json``
(kind, parameters, size, the matcher it was built with, the dataset fingerprint).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from itm_core.contract.params import Params
from itm_core.errors import DataError, ModelError, ParamsError

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
META_FILE = "index.json"


class SearchIndexError(ModelError):
    """An index that cannot be used as asked (missing, built by another matcher, bad k)."""


class IndexSettings(Params):
    """The FAISS index: exact below a size, a graph (HNSW) or inverted lists of compressed codes (IVF-PQ) above."""

    kind: Literal["auto", "flat", "hnsw", "ivfpq"] = Field(
        "auto", description="`auto` picks by size: flat (exact) < exact_below <= hnsw < hnsw_below <= ivfpq"
    )
    exact_below: int = Field(50_000, ge=1, description="auto: exact search (IndexFlatIP) below this many items")
    hnsw_below: int = Field(500_000, ge=1, description="auto: HNSW below this many items, IVF-PQ from here on")
    hnsw_m: int = Field(32, ge=4, description="hnsw: links per node")
    ef_construction: int = Field(128, ge=8, description="hnsw: candidate list while building")
    ef_search: int = Field(256, ge=8, description="hnsw: candidate list while searching (recall vs speed)")
    nlist: int = Field(0, ge=0, description="ivfpq: inverted lists (0: about 4 x sqrt(items))")
    pq_m: int = Field(0, ge=0, description="ivfpq: sub-quantisers, dividing the embedding size (0: about dim / 4)")
    nprobe: int = Field(64, ge=1, description="ivfpq: lists visited per query (recall vs speed)")
    refine: int = Field(20, ge=1, description="ivfpq: re-rank refine x k candidates with exact scores")
    train_size: int = Field(100_000, ge=1, description="ivfpq: vectors the quantisers are trained on")

    def choose(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        if n < self.exact_below:
            return "flat"
        return "hnsw" if n < self.hnsw_below else "ivfpq"


@dataclass
class SearchIndex:
    index: Any
    items: pd.DataFrame
    kind: str
    dim: int
    settings: IndexSettings = field(default_factory=IndexSettings)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        items: pd.DataFrame,
        settings: IndexSettings | None = None,
        meta: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> SearchIndex:
        """An index over ``vectors`` (rows are unit vectors); ``items`` has one row per vector."""
        import faiss

        settings = settings or IndexSettings()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise DataError(f"an index needs a non-empty (n, dim) array of vectors, got shape {vectors.shape}")
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} items for {len(vectors)} vectors")
        n, dim = vectors.shape
        kind = settings.choose(n)
        index: Any  # faiss' index classes share no typed base that has what each one is configured with
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = settings.ef_construction
            index.hnsw.efSearch = settings.ef_search
        else:
            nlist = settings.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            pq_m = settings.pq_m or _pq_subquantisers(dim)
            if dim % pq_m:
                raise ParamsError(f"index.pq_m ({pq_m}) must divide the embedding dimension ({dim})")
            quantiser = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFPQ(quantiser, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = vectors[rng.choice(n, min(n, max(settings.train_size, 39 * nlist)), replace=False)]
            ivf.train(sample)
            ivf.nprobe = min(settings.nprobe, nlist)
            index = faiss.IndexRefineFlat(ivf)
            index.k_factor = float(settings.refine)
        index.add(vectors)
        return cls(index, items.reset_index(drop=True), kind, dim, settings, dict(meta or {}))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row numbers of the ``k`` best items for each query (rows of unit vectors)."""
        if not 1 <= k <= len(self):
            raise SearchIndexError(f"k must be between 1 and the index size ({len(self)}), got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {queries.shape}")
        scores, rows = self.index.search(queries, k)
        return scores, rows

    def save(self, folder: str | Path) -> Path:
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        self.items.to_parquet(folder / ITEMS_FILE, index=False)
        meta = {
            **self.meta,
            "kind": self.kind,
            "dim": self.dim,
            "size": len(self),
            "settings": self.settings.model_dump(),
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SearchIndex:
        import faiss

        folder = Path(folder)
        missing = [f for f in (INDEX_FILE, ITEMS_FILE, META_FILE) if not (folder / f).is_file()]
        if missing:
            raise SearchIndexError(
                f"{folder} is not a saved search index (missing {', '.join(missing)}); build one with `itm run index`"
            )
        meta = json.loads((folder / META_FILE).read_text())
        index: Any = faiss.read_index(str(folder / INDEX_FILE))
        settings = IndexSettings(**meta.pop("settings", {}))
        kind, dim = meta.pop("kind"), int(meta.pop("dim"))
        meta.pop("size", None)
        if kind == "hnsw":
            index.hnsw.efSearch = settings.ef_search
        return cls(index, pd.read_parquet(folder / ITEMS_FILE), kind, dim, settings, meta)


def _pq_subquantisers(dim: int) -> int:
    """The largest divisor of ``dim`` that is at most ``min(64, dim // 4)`` (8-bit codes of 4+ dimensions each)."""
    for m in range(min(64, max(1, dim // 4)), 0, -1):
        if dim % m == 0:
            return m
    return 1
