"""Safe image loading: paths stay inside the dataset root; bad files are named, then skipped or fatal."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from itm_core.data.pairs import DataError, ImageTextSet

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300: larger is treated as a decompression bomb
OnError = Literal["fail", "skip"]


@dataclass
class SkippedImage:
    path: str
    reason: str


def resolve_inside(root: Path, relative: str | Path) -> Path:
    """``root / relative``, refusing a path that escapes ``root`` (``..``, absolute, symlinks out)."""
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / relative).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise DataError(f"image path {str(relative)!r} escapes the dataset root {str(root_resolved)!r}")
    return candidate


def open_image(path: Path | Any, max_pixels: int = DEFAULT_MAX_PIXELS, label: str | None = None) -> Image.Image:
    """Decode ``path`` (or a binary file object) fully as RGB; raise :class:`DataError` naming the file
    (or ``label``) when it cannot be used."""
    label = label or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise DataError(
                        f"{label}: {w}x{h} pixels exceeds the limit of {max_pixels} (possible decompression bomb)"
                    )
                img.load()
                return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{label}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{label}: not a usable image (not a format Pillow can identify)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{label}: not a usable image ({exc})") from None
    except OSError as exc:
        raise DataError(f"{label}: corrupt or truncated image ({exc})") from None


def image_from_reference(value: str, max_pixels: int = DEFAULT_MAX_PIXELS, allow_paths: bool = True) -> Image.Image:
    """An image given as a file path, a ``data:image/...;base64,`` URI or bare base64 image bytes
    (what a scoring request to a served model carries). With ``allow_paths=False`` only image data
    is accepted: a request never makes a server read its own files."""
    import base64
    import binascii
    import io

    text = str(value).strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    elif allow_paths and len(text) < 1024 and Path(text).is_file():
        return open_image(Path(text), max_pixels)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        expected = (
            "neither an image file that exists here nor base64-encoded image data"
            if allow_paths
            else "not base64-encoded image data"
        )
        raise DataError(f"{str(value)[:80]!r}: {expected}") from None
    return open_image(io.BytesIO(raw), max_pixels, label="base64 image")


def load_images(paths: Sequence[Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    return [open_image(p, max_pixels) for p in paths]


SKIP_HINT = "Set the dataset's on_bad_image to 'skip' to leave bad images out (they are listed in skipped_images.csv)."


def read_images(
    data: ImageTextSet, on_error: OnError = "fail", max_pixels: int = DEFAULT_MAX_PIXELS, limit: int | None = None
) -> tuple[ImageTextSet, list[Image.Image], list[SkippedImage]]:
    """Decode the images of ``data`` in order, each once, and keep them: the usable subset (captions
    follow their images), its decoded images and the skipped ones. With ``on_error="skip"`` bad images
    are left out and reported, else the first one fails naming the file; ``limit`` stops after that
    many usable images (the subset is then the first ``limit`` usable ones)."""
    return _read(data, on_error, max_pixels, limit, keep_images=True)


def check_images(
    data: ImageTextSet, on_error: OnError = "fail", max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[ImageTextSet, list[SkippedImage]]:
    """Decode every image once. With ``on_error="skip"`` drop bad ones and report them; else fail on the first."""
    kept, _, skipped = _read(data, on_error, max_pixels, None, keep_images=False)
    return kept, skipped


def _read(
    data: ImageTextSet, on_error: OnError, max_pixels: int, limit: int | None, keep_images: bool
) -> tuple[ImageTextSet, list[Image.Image], list[SkippedImage]]:
    if on_error not in ("fail", "skip"):
        raise DataError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    keep: list[int] = []
    images: list[Image.Image] = []
    skipped: list[SkippedImage] = []
    for i, rel in enumerate(data.images):
        if limit is not None and len(keep) >= limit:
            break
        try:
            image = open_image(resolve_inside(data.root, rel), max_pixels)
        except DataError as exc:
            if on_error == "fail":
                raise DataError(f"{data.name}: {exc}. {SKIP_HINT}") from None
            skipped.append(SkippedImage(rel, str(exc)))
            continue
        keep.append(i)
        if keep_images:
            images.append(image)
    if not keep:
        raise DataError(f"{data.name}: none of its {len(data)} images could be read")
    return (data if len(keep) == len(data) else data.subset(keep)), images, skipped
