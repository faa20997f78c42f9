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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
META_FILE = "index.json"
KINDS = ("auto", "flat", "hnsw", "ivfpq")


class SearchIndexError(LookupError):
    """An index that cannot be used as asked (missing, built by another matcher, bad k)."""


@dataclass
class IndexSettings:
    kind: str = "auto"
    exact_below: int = 50_000
    hnsw_below: int = 500_000
    hnsw_m: int = 32
    ef_construction: int = 128
    ef_search: int = 256
    nlist: int = 0  # 0: about 4 * sqrt(n)
    pq_m: int = 0  # 0: dim / 4 sub-quantisers (at most 64)
    nprobe: int = 64
    refine: int = 20  # re-rank refine * k candidates exactly (ivfpq)
    train_size: int = 100_000

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
            raise ValueError(f"an index needs a non-empty (n, dim) array of vectors, got shape {vectors.shape}")
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} items for {len(vectors)} vectors")
        if settings.kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {settings.kind!r}")
        n, dim = vectors.shape
        kind = settings.choose(n)
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
                raise ValueError(f"pq_m ({pq_m}) must divide the embedding dimension ({dim})")
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
        meta = {**self.meta, "kind": self.kind, "dim": self.dim, "size": len(self), "settings": asdict(self.settings)}
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
        index = faiss.read_index(str(folder / INDEX_FILE))
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
