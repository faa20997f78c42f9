"""Image-text data: the in-memory set, manifests, safe image loading."""

from itm_core.data.images import SkippedImage, check_images, image_from_reference, load_images, open_image, read_images, resolve_inside
from itm_core.data.manifest import load_manifest
from itm_core.data.pairs import SPLITS, DataError, ImageTextSet

__all__ = [
    "image_from_reference",
    "SPLITS", "DataError", "ImageTextSet", "SkippedImage", "check_images", "load_images", "load_manifest", "read_images",
    "open_image", "resolve_inside",
]
