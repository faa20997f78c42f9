"""Load the dataset a flow's parameters name, with its images checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from itm_core.data.images import SkippedImage, check_images
from itm_core.data.pairs import ImageTextSet

if TYPE_CHECKING:
    from itm_core.config import DatasetParams


def load_dataset(params: DatasetParams, check: bool = True) -> tuple[ImageTextSet, list[SkippedImage]]:
    """Build the registered dataset, keep ``max_images`` per split, and (with ``check``) decode every
    image once to leave out bad ones. Without ``check`` the images are checked later, in the encoding
    pass that reads them anyway (:func:`itm_core.encode.embed.encode_split`)."""
    from itm_core.contract.registry import create

    data = create("dataset", params.name, **params.options).load()
    if params.max_images:
        keep: list[int] = []
        for split in data.splits:
            keep.extend([i for i, s in enumerate(data.image_split) if s == split][: params.max_images])
        data = data.subset(sorted(keep))
    return check_images(data, params.on_bad_image) if check else (data, [])
