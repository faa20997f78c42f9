"""Batched encoding with a content-addressed embedding cache.

A cached row is keyed by the content of its input (the image file's bytes, the caption's text) and by
the encoder's identity (name, options and fitted state), so a second run, or another flow over the
same data, never encodes an item twice. Shards live in ``<cache>/<encoder key>/<shard>.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from itm_core.data.images import DEFAULT_MAX_PIXELS, load_images
from itm_core.data.pairs import ImageTextSet


def default_cache_dir() -> Path:
    """``$ITM_CACHE_DIR``, else ``$ITM_HOME/cache`` (``ITM_HOME`` defaults to ``./.itm``)."""
    if os.environ.get("ITM_CACHE_DIR"):
        return Path(os.environ["ITM_CACHE_DIR"])
    return Path(os.environ.get("ITM_HOME", ".itm")) / "cache"


def encoder_key(encoder: Any) -> str:
    """A hash of the encoder's name, options and fitted state."""
    state = encoder.get_state() if hasattr(encoder, "get_state") else None
    ident = {
        "name": getattr(encoder, "name", type(encoder).__name__),
        "options": getattr(encoder, "options", {}),
        "state": hashlib.sha256(pickle.dumps(state)).hexdigest() if state is not None else None,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def content_keys(items: Sequence[Any], modality: str) -> list[str]:
    """One hash per item: the bytes of an image file, the UTF-8 of a text."""
    if modality == "image":
        return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in items]
    return [hashlib.sha256(str(t).encode("utf-8")).hexdigest() for t in items]


class EmbeddingCache:
    """Shards of embeddings per encoder key, looked up by content key."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def _shards(self, enc_key: str) -> list[Path]:
        return sorted((self.folder / enc_key).glob("*.pt"))

    def get(self, enc_key: str, keys: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
        """Cached rows (one tensor per field) for whichever of ``keys`` are present."""
        wanted = set(keys)
        found: dict[str, dict[str, torch.Tensor]] = {}
        for shard in self._shards(enc_key):
            data = torch.load(shard, weights_only=True)
            for n, k in enumerate(data["keys"]):
                if k in wanted:
                    found[k] = {field: t[n] for field, t in data["tensors"].items()}
        return found

    def put(self, enc_key: str, keys: Sequence[str], tensors: dict[str, torch.Tensor]) -> None:
        folder = self.folder / enc_key
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
        tmp = folder / f".{name}.tmp"
        torch.save({"keys": list(keys), "tensors": {f: t.detach().cpu().contiguous() for f, t in tensors.items()}}, tmp)
        tmp.replace(folder / f"{name}.pt")


def _encode_cached(
    encoder: Any,
    items: Sequence[Any],
    cache: EmbeddingCache | None,
    what: str,
    compute: Any,
    batch_size: int,
    desc: str | None,
    max_pixels: int,
) -> dict[str, torch.Tensor] | None:
    """Rows of ``compute(batch) -> {field: tensor}`` for ``items``, from ``cache`` where present."""
    modality = encoder.modality
    keys = content_keys(items, modality)
    enc_key = encoder_key(encoder) + ("" if what == "pooled" else f"-{what}")
    known = cache.get(enc_key, keys) if cache is not None else {}
    todo: dict[str, Any] = {}
    for k, item in zip(keys, items):
        if k not in known and k not in todo:
            todo[k] = item
    if todo:
        todo_keys = list(todo)
        parts: list[dict[str, torch.Tensor]] = []
        label = desc or f"encoding with {getattr(encoder, 'name', 'encoder')}"
        bar = tqdm(total=len(todo_keys), desc=label, unit=modality, leave=False, disable=None)
        with torch.inference_mode():
            for start in range(0, len(todo_keys), batch_size):
                batch = [todo[k] for k in todo_keys[start : start + batch_size]]
                inputs = load_images([Path(p) for p in batch], max_pixels) if modality == "image" else list(batch)
                parts.append({f: t.cpu() for f, t in compute(inputs).items()})
                bar.update(len(batch))
        bar.close()
        fresh = {f: torch.cat([p[f] for p in parts]) for f in parts[0]}
        if cache is not None:
            cache.put(enc_key, todo_keys, fresh)
        for n, k in enumerate(todo_keys):
            known[k] = {f: t[n] for f, t in fresh.items()}
    if not keys:
        return None
    return {f: torch.stack([known[k][f] for k in keys]) for f in known[keys[0]]}


def encode(
    encoder: Any,
    items: Sequence[Any],
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    desc: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Encode ``items`` (image paths for image encoders, strings for text) into ``(N, dim)``.

    Only items missing from ``cache`` are encoded; duplicates are encoded once.
    """
    out = _encode_cached(encoder, items, cache, "pooled", lambda b: {"emb": encoder.encode(b).float()}, batch_size, desc, max_pixels)
    return torch.zeros(0, int(encoder.dim)) if out is None else out["emb"]


def encode_tokens(
    encoder: Any,
    items: Sequence[Any],
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    desc: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token- or patch-level features ``(N, L, token_dim)`` (stored as float16) and their mask ``(N, L)``."""
    if not hasattr(encoder, "encode_tokens"):
        raise ValueError(f"encoder {getattr(encoder, 'name', encoder)!r} gives no token-level features (no encode_tokens)")

    def compute(batch: list[Any]) -> dict[str, torch.Tensor]:
        tokens, mask = encoder.encode_tokens(batch)
        return {"tokens": tokens.half(), "mask": mask.bool()}

    out = _encode_cached(encoder, items, cache, "tokens", compute, batch_size, desc, max_pixels)
    if out is None:
        return torch.zeros(0, 0, int(encoder.token_dim), dtype=torch.half), torch.zeros(0, 0, dtype=torch.bool)
    return out["tokens"], out["mask"]


@dataclass
class FeatureSplit:
    """Tower features of one split: images ``(N, Di)``, captions ``(M, Dt)``, caption -> image index."""

    image: torch.Tensor
    text: torch.Tensor
    caption_image: torch.Tensor


def encode_split(image_encoder: Any, text_encoder: Any, data: ImageTextSet, cache: EmbeddingCache | None = None) -> FeatureSplit:
    """Both towers' features for every image and caption of ``data``."""
    return FeatureSplit(
        image=encode(image_encoder, [str(p) for p in data.image_paths()], cache, desc=f"{data.name}: {getattr(image_encoder, 'name', 'image')}"),
        text=encode(text_encoder, data.captions, cache, desc=f"{data.name}: {getattr(text_encoder, 'name', 'text')}"),
        caption_image=torch.tensor(data.caption_image, dtype=torch.long),
    )


@dataclass
class ModalityFeatures:
    """Pooled features ``(N, D)`` and, when asked for, token features ``(N, L, token_dim)`` with their mask."""

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.pooled)

    @staticmethod
    def concat(parts: Sequence["ModalityFeatures"]) -> "ModalityFeatures":
        """The rows of ``parts`` one after another (token features only if every part has them)."""
        has_tokens = all(p.tokens is not None for p in parts)
        return ModalityFeatures(
            torch.cat([p.pooled for p in parts]),
            torch.cat([p.tokens for p in parts]) if has_tokens else None,
            torch.cat([p.mask for p in parts]) if has_tokens else None,
        )

    def rows(self, index: Any, tokens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The features of rows ``index``: tokens (as float32) with their mask, or pooled features and ``None``."""
        if tokens:
            if self.tokens is None:
                raise ValueError("token-level features were not encoded for this input")
            return self.tokens[index].float(), self.mask[index]
        return self.pooled[index], None


def encode_features(encoder: Any, items: Sequence[Any], cache: EmbeddingCache | None = None, tokens: bool = False, desc: str | None = None) -> ModalityFeatures:
    """Pooled features of ``items``, plus token features when ``tokens`` is set."""
    pooled = encode(encoder, items, cache, desc=desc)
    if not tokens:
        return ModalityFeatures(pooled)
    tok, mask = encode_tokens(encoder, items, cache, desc=f"{desc or ''} tokens".strip())
    return ModalityFeatures(pooled, tok, mask)
