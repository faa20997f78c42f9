"""The encoding pipeline: read, decode, encode, cache, in one pass over the items.

A cached row is keyed by the content of its input (the image file's bytes, the caption's text) and by
the encoder's identity (name, options and fitted state), so a second run, or another flow over the
same data, never encodes an item twice (:mod:`itm_core.encode.cache`). Image files are read, hashed,
checked and decoded once, in loader worker processes that run ahead of the model
(:mod:`itm_core.encode.loader`); rows are committed to the cache in shards as they are produced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from itm_core.contract.components import Encoder
from itm_core.contract.params import Params
from itm_core.contract.state import state_digest
from itm_core.data.images import DEFAULT_MAX_PIXELS, SKIP_HINT, SkippedImage
from itm_core.data.pairs import DataError, ImageTextSet
from itm_core.encode.cache import EmbeddingCache, FileKeys, default_cache_dir
from itm_core.encode.features import CachedRows, FeatureSplit, ModalityFeatures
from itm_core.encode.loader import LoadedImage, default_workers, iter_images
from itm_core.encode.runtime import Accelerator
from itm_core.errors import ParamsError
from itm_core.progress import Tracker

__all__ = [
    "EmbeddingCache",
    "EncodeOptions",
    "default_cache_dir",
    "encode",
    "encode_into_cache",
    "encode_split",
    "encode_tokens",
    "encoder_key",
]

PROGRESS_EVERY_S = 10.0  # an encoding pass reports its progress at most this often


class EncodeOptions(Params):
    """How an encoding pass runs: batch sizes, loader processes, cache shards, compiled inference and
    the image pixel limit."""

    batch_size: int = Field(64, ge=1, description="Images per encoder batch")
    text_batch_size: int = Field(
        256, ge=1, description="Texts per encoder batch (texts go in length order, so batches pad little)"
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="Loader processes that read and decode images beside the model (empty: one per two cores; 0: none)",
    )
    compile: Literal["auto", "on", "off", "onnxruntime", "torch"] = Field(
        "auto",
        description="Run locked towers compiled: `auto` in the best runtime the encoder offers (ONNX Runtime, "
        "else torch.compile) for passes large enough to repay building it; `on` always; `onnxruntime` or "
        "`torch` that runtime; `off` eagerly",
    )
    shard_size: int = Field(2048, ge=1, description="Rows per committed cache shard (a killed run redoes at most one)")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Images with more pixels than this are refused as decompression bombs"
    )

    @property
    def loader_workers(self) -> int:
        return default_workers() if self.workers is None else self.workers


def encoder_key(encoder: Encoder) -> str:
    """A hash of the encoder's name, options and fitted state."""
    state = encoder.get_state() if hasattr(encoder, "get_state") else None
    ident = {
        "name": getattr(encoder, "name", type(encoder).__name__),
        "options": getattr(encoder, "options", {}),
        "state": state_digest(state),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def text_key(text: str) -> str:
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()


@dataclass
class Encoded:
    """The rows of one encoding pass: ``arrays[field][i]`` for item ``i`` where ``ok[i]``; ``failures``
    are (item position, reason) for images that could not be used; ``keys`` the content keys (under
    the encoder key ``enc_key``)."""

    arrays: dict[str, np.ndarray]
    ok: np.ndarray
    failures: list[tuple[int, str]] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    enc_key: str = ""


class _Rows:
    """The output arrays of a pass plus the pending shard of fresh rows, committed every ``shard_size`` rows."""

    def __init__(
        self,
        n: int,
        dtypes: dict[str, Any],
        cache: EmbeddingCache | None,
        enc_key: str,
        files: FileKeys | None,
        shard_size: int,
    ) -> None:
        self.n, self.dtypes, self.cache, self.enc_key, self.files, self.shard_size = (
            n,
            dtypes,
            cache,
            enc_key,
            files,
            shard_size,
        )
        self.out: dict[str, np.ndarray] = {}
        self.done = np.zeros(n, dtype=bool)
        self.pending_keys: list[str] = []
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_files: list[tuple[str, int, int, str]] = []

    def add(self, positions: list[list[int]], keys: list[str], rows: dict[str, np.ndarray]) -> None:
        for f, values in rows.items():
            if f not in self.out:
                self.out[f] = np.empty((self.n, *values.shape[1:]), dtype=self.dtypes[f])
        for r, pos in enumerate(positions):
            for f, values in rows.items():
                self.out[f][pos] = values[r]
            self.done[pos] = True
        self.pending_keys.extend(keys)
        self.pending.append(rows)
        if len(self.pending_keys) >= self.shard_size:
            self.flush()

    def fill_from_cache(self, positions: list[int], keys: list[str]) -> set[int]:
        """Copy in the rows the cache holds for ``keys`` (those of items ``positions``); the indices into
        ``keys`` that were found."""
        assert self.cache is not None  # rows are found only in a cache
        found = self.cache.lookup(self.enc_key, keys)
        self.cache.read_into(
            self.enc_key,
            {s: [(positions[p], r) for p, r in pairs] for s, pairs in found.items()},
            self.out,
            self.n,
            self.dtypes,
        )
        hit = {p for pairs in found.values() for p, _ in pairs}
        self.done[[positions[p] for p in hit]] = True
        return hit

    def flush(self) -> None:
        if self.cache is not None and self.pending_keys:
            self.cache.put(
                self.enc_key,
                self.pending_keys,
                {f: np.concatenate([p[f] for p in self.pending]) for f in self.pending[0]},
            )
        if self.files is not None:
            self.files.remember(self.pending_files)
        self.pending_keys, self.pending, self.pending_files = [], [], []


def _encode_pass(
    encoder: Encoder,
    items: Sequence[Any],
    cache: EmbeddingCache | None,
    what: str,
    compute: Callable[[list[Any]], dict[str, torch.Tensor]],
    dtypes: dict[str, Any],
    options: EncodeOptions,
    desc: str | None,
    preprocess: Callable[[Any], Any] | None = None,
    on_error: Literal["fail", "skip"] = "fail",
) -> Encoded:
    """One pass over ``items``: rows from ``cache`` where present, the rest read, encoded and committed."""
    n, modality = len(items), encoder.modality
    enc_key = encoder_key(encoder) + ("" if what == "pooled" else f"-{what}")
    files = FileKeys(cache.folder) if cache is not None and modality == "image" else None
    if modality == "image":
        items = [str(p) for p in items]
        keys: list[str | None] = files.known(items) if files is not None else [None] * n
    else:
        keys = [text_key(t) for t in items]
    rows = _Rows(n, dtypes, cache, enc_key, files, options.shard_size)
    known = [(i, k) for i, k in enumerate(keys) if k is not None]
    if cache is not None and known:
        rows.fill_from_cache([i for i, _ in known], [k for _, k in known])
    # items still to encode, each distinct key once (an image's key is known only once it is read)
    first: dict[str, list[int]] = {}
    todo: list[int] = []
    for i in np.flatnonzero(~rows.done).tolist():
        k = keys[i]
        if k is None:
            todo.append(i)
        elif k in first:
            first[k].append(i)
        else:
            first[k] = [i]
            todo.append(i)
    failures: list[tuple[int, str]] = []
    if todo:
        label = desc or f"encoding with {getattr(encoder, 'name', 'encoder')}"
        tracker = Tracker(label, len(todo), "image" if modality == "image" else "caption", every_s=PROGRESS_EVERY_S)
        accel = Accelerator(encoder, what, len(todo), options.compile, options.batch_size)
        try:
            with torch.inference_mode():
                batches: Iterable[Sequence[LoadedImage | _Text]]
                if modality == "image":
                    batches = iter_images(
                        [items[i] for i in todo],
                        options.batch_size,
                        options.loader_workers,
                        options.max_pixels,
                        preprocess,
                    )
                else:  # similar lengths together: batches pad to their longest text
                    order = sorted(todo, key=lambda i: len(items[i]))
                    batches = (
                        [_Text(i, items[i]) for i in order[s : s + options.text_batch_size]]
                        for s in range(0, len(order), options.text_batch_size)
                    )
                for batch in batches:
                    fresh_keys: list[str] = []
                    values: list[Any] = []
                    file_rows: list[tuple[str, int, int, str]] = []
                    for got in batch:
                        if isinstance(got, LoadedImage):
                            i = todo[got.index]
                            if got.error is not None:
                                if on_error == "fail":
                                    raise DataError(got.error)
                                failures.append((i, got.error))
                                continue
                            assert got.key is not None  # a file read without an error has its content key
                            file_rows.append((got.path, got.size, got.mtime_ns, got.key))
                            keys[i] = got.key
                        else:
                            i = got.index
                        k = keys[i]
                        assert k is not None
                        if k in first and first[k][0] != i:  # the same content at another position, already queued
                            first[k].append(i)
                            continue
                        first.setdefault(k, [i])
                        fresh_keys.append(k)
                        values.append(got.value)
                    rows.pending_files.extend(file_rows)
                    if (
                        modality == "image" and cache is not None and fresh_keys
                    ):  # content first seen under another path
                        hit = rows.fill_from_cache([first[k][0] for k in fresh_keys], fresh_keys)
                        if hit:
                            values = [v for p, v in enumerate(values) if p not in hit]
                            fresh_keys = [k for p, k in enumerate(fresh_keys) if p not in hit]
                    if values:
                        out = accel.run(compute, values)
                        rows.add(
                            [first[k] for k in fresh_keys], fresh_keys, {f: t.cpu().numpy() for f, t in out.items()}
                        )
                    tracker.advance(len(batch))
        finally:
            rows.flush()
            tracker.finish()
        # positions that joined a key after its row was written
        for pos in first.values():
            if len(pos) > 1 and rows.done[pos[0]]:
                for f in rows.out:
                    rows.out[f][pos[1:]] = rows.out[f][pos[0]]
                rows.done[pos] = True
    return Encoded(rows.out, rows.done, failures, keys, enc_key)


@dataclass
class _Text:
    index: int
    value: str


def _pooled_compute(
    encoder: Encoder,
) -> tuple[Callable[[list[Any]], dict[str, torch.Tensor]], Callable[[Any], Any] | None]:
    """The batch computation of pooled features and the per-image step loader workers run: the
    encoder's own ``resized`` / ``encode_resized`` split when it has one (a per-image array, batched by
    stacking), else ``encode`` on decoded images."""
    if encoder.modality == "image" and hasattr(encoder, "resized") and hasattr(encoder, "encode_resized"):
        return (
            lambda batch: {"emb": encoder.encode_resized(torch.from_numpy(np.stack(batch))).float()}
        ), encoder.resized
    return (lambda batch: {"emb": encoder.encode(batch).float()}), None


def _pooled_pass(
    encoder: Encoder,
    items: Sequence[Any],
    cache: EmbeddingCache | None,
    options: EncodeOptions,
    desc: str | None,
    on_error: Literal["fail", "skip"] = "fail",
) -> Encoded:
    """One pass of pooled features (``emb``, float32) over ``items``."""
    compute, preprocess = _pooled_compute(encoder)
    return _encode_pass(
        encoder, items, cache, "pooled", compute, {"emb": np.float32}, options, desc, preprocess, on_error
    )


def encode(
    encoder: Encoder,
    items: Sequence[Any],
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    desc: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    options: EncodeOptions | None = None,
) -> torch.Tensor:
    """Encode ``items`` (image paths for image encoders, strings for text) into ``(N, dim)``.

    Only items missing from ``cache`` are encoded; duplicates are encoded once. An image that cannot
    be used raises :class:`DataError` naming the file.
    """
    out = _pooled_pass(
        encoder, items, cache, options or EncodeOptions(batch_size=batch_size, max_pixels=max_pixels), desc
    )
    return torch.from_numpy(out.arrays["emb"]) if len(items) else torch.zeros(0, int(encoder.dim))


def encode_into_cache(
    encoder: Encoder, items: Sequence[Any], cache: EmbeddingCache, options: EncodeOptions | None = None
) -> Encoded:
    """Encode ``items`` into ``cache`` (pooled features), leaving bad images out: what a worker that
    fills a shared cache runs."""
    return _pooled_pass(encoder, items, cache, options or EncodeOptions(), None, on_error="skip")


def encode_tokens(
    encoder: Encoder,
    items: Sequence[Any],
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    desc: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token- or patch-level features ``(N, L, token_dim)`` (stored as float16) and their mask ``(N, L)``."""
    if not hasattr(encoder, "encode_tokens"):
        raise ParamsError(
            f"encoder {getattr(encoder, 'name', encoder)!r} gives no token-level features (no encode_tokens)"
        )

    def compute(batch: list[Any]) -> dict[str, torch.Tensor]:
        tokens, mask = encoder.encode_tokens(batch)
        return {"tokens": tokens.half(), "mask": mask.bool()}

    options = EncodeOptions(batch_size=batch_size, max_pixels=max_pixels, compile="off")
    out = _encode_pass(
        encoder, items, cache, "tokens", compute, {"tokens": np.float16, "mask": np.bool_}, options, desc
    )
    if not len(items):
        return torch.zeros(0, 0, int(encoder.token_dim), dtype=torch.half), torch.zeros(0, 0, dtype=torch.bool)
    return torch.from_numpy(out.arrays["tokens"]), torch.from_numpy(out.arrays["mask"])


def _image_pass(
    encoder: Encoder,
    data: ImageTextSet,
    cache: EmbeddingCache | None,
    options: EncodeOptions,
    on_bad_image: Literal["fail", "skip"],
) -> tuple[ImageTextSet, Encoded, list[SkippedImage]]:
    paths = [str(p) for p in data.image_paths()]
    try:
        images = _pooled_pass(
            encoder, paths, cache, options, f"{data.name}: {getattr(encoder, 'name', 'image')}", on_bad_image
        )
    except DataError as exc:
        raise DataError(f"{data.name}: {exc}. {SKIP_HINT}") from None
    skipped = [SkippedImage(data.images[i], reason) for i, reason in images.failures]
    if not images.ok.any():
        raise DataError(f"{data.name}: none of its {len(data)} images could be read")
    kept = data if images.ok.all() else data.subset(np.flatnonzero(images.ok).tolist())
    return kept, images, skipped


def encode_images(
    encoder: Encoder,
    data: ImageTextSet,
    cache: EmbeddingCache | None = None,
    options: EncodeOptions | None = None,
    on_bad_image: Literal["fail", "skip"] = "fail",
) -> tuple[ImageTextSet, torch.Tensor, list[SkippedImage]]:
    """The image tower's features of every usable image of ``data``, each file read, checked and
    decoded once, with the same bad-image rules as :func:`encode_split`: the usable subset (captions
    follow their images), its feature rows and the skipped images."""
    kept, images, skipped = _image_pass(encoder, data, cache, options or EncodeOptions(), on_bad_image)
    return kept, torch.from_numpy(images.arrays["emb"][images.ok]), skipped


def encode_split(
    image_encoder: Encoder,
    text_encoder: Encoder,
    data: ImageTextSet,
    cache: EmbeddingCache | None = None,
    options: EncodeOptions | None = None,
    on_bad_image: Literal["fail", "skip"] = "fail",
) -> tuple[ImageTextSet, FeatureSplit, list[SkippedImage]]:
    """Both towers' features for every usable image of ``data`` and its captions, in one pass over the
    images: each file is read, checked and decoded once. Bad images fail the pass (naming the file)
    or, with ``on_bad_image="skip"``, are left out with their captions and reported."""
    options = options or EncodeOptions()
    kept, images, skipped = _image_pass(image_encoder, data, cache, options, on_bad_image)
    image_rows = images.arrays["emb"] if images.ok.all() else images.arrays["emb"][images.ok]
    text = _pooled_pass(
        text_encoder, kept.captions, cache, options, f"{data.name}: {getattr(text_encoder, 'name', 'text')}"
    )
    sources = None
    if cache is not None:
        image_keys = [k for k, ok in zip(images.keys, images.ok) if ok and k is not None]
        sources = (
            CachedRows(str(cache.folder), images.enc_key, image_keys, cache.float16),
            CachedRows(str(cache.folder), text.enc_key, [k for k in text.keys if k is not None], cache.float16),
        )
    text_rows = torch.from_numpy(text.arrays["emb"]) if len(kept.captions) else torch.zeros(0, int(text_encoder.dim))
    return (
        kept,
        FeatureSplit(
            torch.from_numpy(image_rows), text_rows, torch.tensor(kept.caption_image, dtype=torch.long), sources
        ),
        skipped,
    )


def encode_features(
    encoder: Encoder,
    items: Sequence[Any],
    cache: EmbeddingCache | None = None,
    tokens: bool = False,
    desc: str | None = None,
) -> ModalityFeatures:
    """Pooled features of ``items``, plus token features when ``tokens`` is set."""
    pooled = encode(encoder, items, cache, desc=desc)
    if not tokens:
        return ModalityFeatures(pooled)
    tok, mask = encode_tokens(encoder, items, cache, desc=f"{desc or ''} tokens".strip())
    return ModalityFeatures(pooled, tok, mask)
