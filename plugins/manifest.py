"""The built-in ``manifest`` dataset: any CSV, Parquet, JSONL or Karpathy JSON manifest."""

from __future__ import annotations

from typing import Any

from itm_core import hookimpl
from itm_core.components import Dataset
from itm_core.data import ImageTextSet, load_manifest


class ManifestDataset(Dataset):
    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        self.options = options

    def load(self) -> ImageTextSet:
        return load_manifest(self.path, **self.options)


@hookimpl
def register_datasets(register):
    register(
        "manifest",
        ManifestDataset,
        description="A manifest file: CSV, Parquet, JSONL (image and caption columns) or Karpathy JSON",
        options=["path", "root", "format", "image_column", "caption_column", "split_column", "split_ratios", "seed"],
    )
