"""The built-in ``manifest`` dataset (any CSV, Parquet, JSONL or Karpathy JSON manifest) and the
``webdataset`` dataset (``.tar`` shards as img2dataset and open_clip write them)."""

from __future__ import annotations

from typing import Any

from itm_core import hookimpl
from itm_core.components import Dataset
from itm_core.data import ImageTextSet, load_manifest
from itm_core.data.webdataset import load_webdataset
from plugins import check_setups


class ManifestDataset(Dataset):
    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        self.options = options

    def load(self) -> ImageTextSet:
        return load_manifest(self.path, **self.options)


class WebDatasetShards(Dataset):
    def __init__(self, urls: str | list[str], **options: Any) -> None:
        self.urls = urls
        self.options = options

    def load(self) -> ImageTextSet:
        data, left_out = load_webdataset(self.urls, **self.options)
        for member, reason in left_out[:10]:
            print(f"webdataset: left out {member}: {reason}")
        if len(left_out) > 10:
            print(f"webdataset: left out {len(left_out)} samples in all")
        return data


@hookimpl
def register_datasets(register):
    register(
        "manifest",
        ManifestDataset,
        description="A manifest file: CSV, Parquet, JSONL (image and caption columns) or Karpathy JSON",
        options=["path", "root", "format", "image_column", "caption_column", "split_column", "split_ratios", "seed"],
        check_options=check_setups.manifest_options,
    )
    register(
        "webdataset",
        WebDatasetShards,
        description="WebDataset .tar shards ({key}.jpg|png|webp, {key}.txt, optional {key}.json), brace patterns "
        "allowed",
        options=["urls", "split_ratios", "seed", "name", "root"],
        check_options=check_setups.webdataset_options,
    )
