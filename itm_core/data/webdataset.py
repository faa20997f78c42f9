"""WebDataset shards: read ``.tar`` shards as img2dataset and open_clip write them, and pack any
manifest into shards.

A sample is the members of one key: an image (``{key}.jpg``, ``.jpeg``, ``.png`` or ``.webp``), a
caption (``{key}.txt``) and optional metadata (``{key}.json``; its ``captions`` list, when present,
gives every caption of the image, and its ``split`` the split). Shards are read sequentially through
the ``webdataset`` library and each sample's image is written once to a folder beside the other
built datasets (``$ITM_HOME/data/wds-<hash>/<shard>/<key>.<ext>``), so every flow reads them like any
other image files: checked (bombs, corrupt and non-image members) in the encoding pass, with
reports naming the shard and the member.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from itm_core.data.images import resolve_inside
from itm_core.data.manifest import DEFAULT_SPLIT_RATIOS, assign_splits
from itm_core.data.pairs import SPLITS, DataError, ImageTextSet
from itm_core.home import itm_home

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
FORMAT = 1  # bump when the extracted layout changes


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard paths from brace patterns (``shards/{00000..00099}.tar``), as webdataset expands them."""
    import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    out = [u for pattern in patterns for part in pattern.split("::") for u in braceexpand.braceexpand(part)]
    if not out:
        raise DataError(f"webdataset: no shards in {urls!r}")
    return out


def _shard_identity(shards: Sequence[str]) -> str:
    h = hashlib.sha256(str(FORMAT).encode())
    for shard in shards:
        try:
            st = os.stat(shard)
        except OSError:
            raise DataError(f"webdataset: shard {shard!r} does not exist") from None
        h.update(f"{os.path.abspath(shard)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _samples(shards: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Raw samples (bytes per member extension) in shard order; an unreadable shard fails naming it."""
    import webdataset as wds

    for shard in shards:
        try:
            yield from wds.WebDataset(shard, shardshuffle=False, empty_check=False)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(
                f"webdataset: shard {shard!r} cannot be read as a tar file ({type(exc).__name__}: {exc})"
            ) from None


def _captions(sample: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    meta: dict[str, Any] = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
    caps = meta.get("captions") if isinstance(meta, dict) else None
    if isinstance(caps, list) and caps and all(isinstance(c, str) for c in caps):
        return [c for c in caps if c.strip()], meta
    if "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace").strip()
        return ([text] if text else []), meta
    return [], meta


def load_webdataset(
    urls: str | Sequence[str],
    split_ratios: tuple[float, float, float] | None = None,
    seed: int = 0,
    name: str = "webdataset",
    root: str | Path | None = None,
) -> tuple[ImageTextSet, list[tuple[str, str]]]:
    """Read the shards ``urls`` names into an :class:`ImageTextSet`, and the (member, reason) of
    samples left out because they have no image member or no caption.

    Images are written once per shard set (keyed by the shards' paths, sizes and times) under
    ``root`` (default ``$ITM_HOME/data``). Splits come from each sample's ``json`` ``split``; with
    ``split_ratios`` (or when samples have none) they are assigned in those proportions with ``seed``.
    """
    from tqdm.auto import tqdm

    shards = expand_urls(urls)
    base = Path(root) if root else itm_home() / "data"
    folder = base / f"wds-{_shard_identity(shards)}"
    index = folder / "samples.jsonl"
    if not index.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        left_out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for sample in tqdm(
            _samples(shards), desc=f"reading {len(shards)} shards", unit="sample", leave=False, disable=None
        ):
            shard = Path(sample.get("__url__", "shard")).name
            key = str(sample["__key__"])
            member = f"{shard}/{key}"
            ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
            captions, meta = _captions(sample)
            if ext is None:
                left_out.append((member, f"no image member ({', '.join('.' + e for e in IMAGE_EXTENSIONS)})"))
                continue
            if not captions:
                left_out.append((member, "no caption (.txt, or a 'captions' list in .json)"))
                continue
            rel = f"{Path(shard).stem}/{key}.{ext}"
            try:
                target = resolve_inside(folder, rel)
            except DataError:
                left_out.append((member, "unsafe member name (it would escape the dataset folder)"))
                continue
            if rel in seen:
                left_out.append((member, "duplicate key"))
                continue
            seen.add(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(sample[ext])
            split = meta.get("split") if isinstance(meta, dict) and meta.get("split") in SPLITS else None
            rows.append({"image": rel, "captions": captions, "split": split})
        tmp = folder / ".samples.jsonl.tmp"
        tmp.write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
            + "".join(json.dumps({"left_out": m, "reason": r}) + "\n" for m, r in left_out)
        )
        tmp.replace(index)
    rows, left_out = [], []
    for line in index.read_text().splitlines():
        row = json.loads(line)
        if "left_out" in row:
            left_out.append((row["left_out"], row["reason"]))
        else:
            rows.append(row)
    if not rows:
        raise DataError(f"webdataset: the shards {urls!r} hold no sample with an image and a caption")
    splits = [r["split"] for r in rows]
    if split_ratios is not None or any(s is None for s in splits):
        splits = assign_splits(len(rows), split_ratios or DEFAULT_SPLIT_RATIOS, seed)
    captions = [c for r in rows for c in r["captions"]]
    caption_image = [i for i, r in enumerate(rows) for _ in r["captions"]]
    return ImageTextSet(folder, [r["image"] for r in rows], captions, caption_image, splits, name=name), left_out


def pack(data: ImageTextSet, out: str | Path, shard_size: int = 1000, prefix: str = "shard") -> list[Path]:
    """Write ``data`` as WebDataset shards ``out/<prefix>-NNNNN.tar`` of ``shard_size`` samples: each
    image's bytes as they are on disk, its first caption as ``.txt``, every caption and its split in
    ``.json``. Returns the shard paths."""
    import webdataset as wds
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise DataError(f"shard_size must be at least 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    captions = data.captions_by_image()
    with wds.ShardWriter(str(out / f"{prefix}-%05d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i, rel in enumerate(tqdm(data.images, desc=f"packing {data.name}", unit="image", disable=None)):
            path = resolve_inside(data.root, rel)
            ext = path.suffix.lower().lstrip(".")
            if ext not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{rel}: cannot pack a .{ext} image; WebDataset readers take {', '.join(IMAGE_EXTENSIONS)}"
                )
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{rel}: cannot be read ({exc.strerror})") from None
            meta = {"captions": captions[i], "split": data.image_split[i], "source": rel}
            sink.write(
                {
                    "__key__": f"{i:09d}",
                    ext: raw,
                    "txt": captions[i][0] if captions[i] else "",
                    "json": json.dumps(meta),
                }
            )
            if sink.fname and (not written or written[-1] != Path(sink.fname)):
                written.append(Path(sink.fname))
    return written
