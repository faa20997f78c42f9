"""The dataset a flow's parameters name: built through the registry, cut to ``max_images`` per split,
its images checked."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from itm_core.contract.params import Params
from itm_core.contract.registry import create
from itm_core.data.images import SkippedImage, check_images
from itm_core.data.pairs import ImageTextSet


class DatasetParams(Params):
    component_kind: ClassVar[str] = "dataset"

    name: str = Field("shapes", description="A registered dataset: `shapes`, `manifest`, or one from a plugin")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options for the dataset, e.g. {'path': 'pairs.csv'} for `manifest`"
    )
    on_bad_image: Literal["fail", "skip"] = Field(
        "skip", description="Missing or corrupt images: skip them (and report which) or fail"
    )
    max_images: int = Field(0, ge=0, description="Use only the first N images of each split (0: all)")


def load_dataset(params: DatasetParams, check: bool = True) -> tuple[ImageTextSet, list[SkippedImage]]:
    """Build the registered dataset, keep ``max_images`` per split, and (with ``check``) decode every
    image once to leave out bad ones. Without ``check`` the images are checked later, in the encoding
    pass that reads them anyway (:func:`itm_core.encode.embed.encode_split`)."""
    data = create("dataset", params.name, **params.options).load()
    if params.max_images:
        keep: list[int] = []
        for split in data.splits:
            keep.extend([i for i, s in enumerate(data.image_split) if s == split][: params.max_images])
        data = data.subset(sorted(keep))
    return check_images(data, params.on_bad_image) if check else (data, [])
