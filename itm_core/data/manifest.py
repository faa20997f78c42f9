"""Read image-text manifests: CSV, Parquet, JSONL (one row per pair or a list of captions per row)
and the Karpathy JSON files (``dataset_coco.json``, ``dataset_flickr30k.json``)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

from itm_core.data.images import resolve_inside
from itm_core.data.pairs import SPLITS, DataError, ImageTextSet

Format = Literal["auto", "csv", "parquet", "jsonl", "karpathy"]
_SUFFIX_FORMAT = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "karpathy",
}
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)  # train, val, test of data that comes without splits


def detect_format(path: Path) -> str:
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the manifest format from {path.suffix!r}; use one of {sorted(_SUFFIX_FORMAT)} or "
            "pass format="
        )
    return fmt


def load_manifest(
    path: str | Path,
    root: str | Path | None = None,
    format: Format = "auto",
    image_column: str = "image",
    caption_column: str = "caption",
    split_column: str | None = "split",
    extra_columns: tuple[str, ...] = (),
    split_ratios: tuple[float, float, float] | None = None,
    seed: int = 0,
    name: str | None = None,
) -> ImageTextSet:
    """Load a manifest into an :class:`ImageTextSet`.

    Image paths are relative to ``root`` (default: the manifest's folder) and must stay inside it.
    Images keep the splits the file gives them (a split column, or the Karpathy ``split``); with
    ``split_ratios`` (train, val, test) they are split afresh in those proportions with ``seed``,
    whatever the file says, and a file without splits is split 0.8 / 0.1 / 0.1.
    ``extra_columns`` are kept per image in ``image_extras`` (first value seen for each image).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {str(path)!r} does not exist")
    root = Path(root) if root is not None else path.parent
    fmt = detect_format(path) if format == "auto" else format
    name = name or path.stem
    if fmt == "karpathy":
        data = _load_karpathy(path, root, name)
    else:
        rows = _read_table(path, fmt)
        data = _from_rows(rows, path, root, name, image_column, caption_column, split_column, tuple(extra_columns))
    if split_ratios is not None or "" in data.image_split:
        data.image_split = assign_splits(len(data.images), split_ratios or DEFAULT_SPLIT_RATIOS, seed)
    return data


def _read_table(path: Path, fmt: str) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        if fmt == "csv":
            frame = pd.read_csv(path, keep_default_na=False)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True)
        else:
            raise DataError(f"{path}: unknown manifest format {fmt!r}; expected csv, parquet, jsonl or karpathy")
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1 if fmt in ("csv", "jsonl") else None
        where = f", line {line}" if line else ""
        raise DataError(
            f"{path}{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the manifest as UTF-8"
        ) from None
    except Exception as exc:
        raise DataError(f"{path}: could not be read as {fmt}: {exc}") from None
    return frame.to_dict("records")


def _from_rows(
    rows: list[dict[str, Any]],
    path: Path,
    root: Path,
    name: str,
    image_column: str,
    caption_column: str,
    split_column: str | None,
    extra_columns: tuple[str, ...],
) -> ImageTextSet:
    """The images of ``rows`` with their splits (``""`` without a split column: :func:`load_manifest`
    assigns them)."""
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")
    columns = list(rows[0])
    roles = [("image_column", image_column), ("caption_column", caption_column)] + [
        ("extra_columns", c) for c in extra_columns
    ]
    for role, col in roles:
        if col not in columns:
            raise DataError(f"{path}: no column {col!r} ({role}); the columns are: {', '.join(map(str, columns))}")
    has_split = split_column is not None and split_column in columns
    index: dict[str, int] = {}
    images: list[str] = []
    image_split: list[str] = []
    captions: list[str] = []
    caption_image: list[int] = []
    extras: dict[str, list[Any]] = {c: [] for c in extra_columns}
    for line, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        image = row[image_column]
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{path}, row {line}: column {image_column!r} must hold an image path, got {image!r}")
        try:
            resolve_inside(root, image)
        except DataError as exc:
            raise DataError(f"{path}, row {line}: {exc}") from None
        value = row[caption_column]
        texts = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else [value]
        texts = [t for t in texts if not (isinstance(t, str) and not t.strip())]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise DataError(
                f"{path}, row {line}: column {caption_column!r} must hold a caption or a list of captions, got "
                f"{value!r}"
            )
        split = str(row[split_column]).strip() if has_split and split_column is not None else None
        if image not in index:
            index[image] = len(images)
            images.append(image)
            image_split.append(split or "")
            for c in extra_columns:
                extras[c].append(row[c])
        k = index[image]
        if has_split and image_split[k] != split:
            raise DataError(
                f"{path}, row {line}: image {image!r} is in split {split!r} here and {image_split[k]!r} earlier"
            )
        captions.extend(texts)
        caption_image.extend([k] * len(texts))
    return ImageTextSet(root, images, captions, caption_image, image_split, name=name, image_extras=extras)


def assign_splits(n: int, ratios: tuple[float, float, float], seed: int) -> list[str]:
    """Deterministic train/val/test labels for ``n`` images in the given proportions."""
    if len(ratios) != 3 or any(not isinstance(r, (int, float)) or r < 0 for r in ratios) or sum(ratios) <= 0:
        raise DataError(f"split_ratios must be three non-negative numbers (train, val, test), got {ratios}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    total = sum(ratios)
    n_train = round(n * ratios[0] / total)
    n_val = round(n * ratios[1] / total)
    labels = [""] * n
    for rank, i in enumerate(order):
        labels[i] = SPLITS[0] if rank < n_train else SPLITS[1] if rank < n_train + n_val else SPLITS[2]
    return labels


def _load_karpathy(path: Path, root: Path, name: str) -> ImageTextSet:
    try:
        doc = json.loads(path.read_text())
        entries = doc["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a Karpathy split file (a JSON object with an 'images' list): {exc}") from None
    images: list[str] = []
    image_split: list[str] = []
    captions: list[str] = []
    caption_image: list[int] = []
    for n, entry in enumerate(entries):
        try:
            rel = str(Path(entry.get("filepath", "")) / entry["filename"])
            split = KARPATHY_SPLITS[entry["split"]]
            texts = [s["raw"] for s in entry["sentences"]]
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"{path}: images[{n}] lacks {exc} (expected 'filename', 'split' in {sorted(KARPATHY_SPLITS)}, "
                "'sentences' with 'raw')"
            ) from None
        try:
            resolve_inside(root, rel)
        except DataError as exc:
            raise DataError(f"{path}: images[{n}]: {exc}") from None
        caption_image.extend([len(images)] * len(texts))
        captions.extend(texts)
        images.append(rel)
        image_split.append(split)
    if not images:
        raise DataError(f"{path}: the Karpathy file lists no images")
    return ImageTextSet(root, images, captions, caption_image, image_split, name=name)
