"""Image-text data: the in-memory set, manifests, safe image loading."""

from itm_core.data.images import (
    SkippedImage,
    check_images,
    image_from_reference,
    load_images,
    open_image,
    read_images,
    resolve_inside,
)
from itm_core.data.manifest import load_manifest
from itm_core.data.pairs import SPLITS, DataError, ImageTextSet

__all__ = [
    "SPLITS",
    "DataError",
    "ImageTextSet",
    "SkippedImage",
    "check_images",
    "image_from_reference",
    "load_images",
    "load_manifest",
    "open_image",
    "read_images",
    "resolve_inside",
]
