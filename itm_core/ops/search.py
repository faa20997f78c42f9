"""Searching a collection: where an index is, which matcher built it, and the served ``itm-search`` model.

An index records the matcher it was built with (``matcher_id``: ``itm-matcher v3``, ``run <id>`` or
``folder <path>``). Searching resolves the matcher the user asks for (the champion by default) the
same way; a different one is refused with the version the index needs, because embeddings of two
matchers do not share a space.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient

from itm_core.errors import DataError, ModelError, ParamsError
from itm_core.models.matcher import Matcher
from itm_core.models.search_index import SearchIndex, SearchIndexError
from itm_core.ops.tracking import bad_request_errors, check_rows, example_image_base64, load_matcher

INDEX_EXPERIMENT = "itm-index"
FOLLOW, FOLLOW_SECONDS = "ITM_SEARCH_FOLLOW", "ITM_SEARCH_FOLLOW_SECONDS"
SEARCH_MODEL = "itm-search"
DEFAULT_MATCHER = "models:/itm-matcher@champion"
MAX_K = 1000


@dataclass(frozen=True)
class MatcherIdentity:
    """Which matcher a URI names, as far as embeddings go: a registered version, a run, or a folder."""

    id: str
    uri: str
    version_uri: str | None = None  # models:/name/version, to load that very matcher again

    def describe(self) -> str:
        return self.id if self.version_uri is None else f"{self.id} ({self.version_uri})"


def matcher_identity(uri: str) -> MatcherIdentity:
    if Path(uri).is_dir():
        return MatcherIdentity(f"folder {Path(uri).resolve()}", uri)
    client = MlflowClient()
    by_alias = re.fullmatch(r"models:/([^/@]+)@([^/]+)", uri)
    by_version = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri)
    try:
        if by_alias:
            v = client.get_model_version_by_alias(*by_alias.groups())
        elif by_version:
            v = client.get_model_version(*by_version.groups())
        else:
            run = re.fullmatch(r"runs:/([0-9a-f]+)/.*", uri)
            return MatcherIdentity(f"run {run.group(1)}" if run else uri, uri)
    except MlflowException as exc:
        raise ModelError(
            f"cannot resolve matcher {uri!r} in MLflow ({mlflow.get_tracking_uri()}): {exc.message}"
        ) from None
    return MatcherIdentity(f"{v.name} v{v.version}", uri, f"models:/{v.name}/{v.version}")


def alias_version(name_at_alias: str) -> str | None:
    """The version ``name@alias`` points to now (``None``: no such alias, or the registry is unreachable)."""
    name, _, alias = name_at_alias.partition("@")
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def latest_index_run() -> Any:
    """The newest finished run of ``itm run index``."""
    runs = mlflow.search_runs(
        experiment_names=[INDEX_EXPERIMENT],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise SearchIndexError(f"no index in MLflow ({mlflow.get_tracking_uri()}) yet: build one with `itm run index`")
    return runs[0]


def locate_index(ref: str | None, target: str = "images") -> tuple[Path, str]:
    """A local folder holding the index for ``target`` (``images`` or ``captions``), and where it came
    from. ``ref``: a saved index folder, an ``itm run index`` run id, ``runs:/<id>``, or nothing for
    the newest index run."""
    subfolder = "index" if target == "images" else "captions"
    if ref and Path(ref).is_dir():
        folder = Path(ref)
        return (folder / subfolder if (folder / subfolder).is_dir() else folder), f"folder {folder}"
    run_id = ref.removeprefix("runs:/").split("/")[0] if ref else latest_index_run().info.run_id
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=subfolder, dst_path=tempfile.mkdtemp(prefix="itm-index-")
        )
    except MlflowException as exc:
        what = "a caption index (build it with captions: true)" if target == "captions" else "an index"
        raise SearchIndexError(
            f"run {run_id!r} has no {what} in MLflow ({mlflow.get_tracking_uri()}): {exc.message}"
        ) from None
    return Path(local), f"run {run_id}"


class Searcher:
    """A matcher and an index built by that very matcher: text or image queries in, the top k out."""

    def __init__(self, matcher: Matcher, index: SearchIndex) -> None:
        self.matcher = matcher
        self.index = index

    @classmethod
    def open(cls, index_ref: str | None = None, matcher_uri: str | None = None, target: str = "images") -> Searcher:
        folder, source = locate_index(index_ref, target)
        index = SearchIndex.load(folder)
        built_with = index.meta.get("matcher_id")
        wanted = matcher_identity(matcher_uri or DEFAULT_MATCHER)
        if built_with != wanted.id:
            needed = index.meta.get("matcher_version_uri") or index.meta.get("matcher_uri")
            raise SearchIndexError(
                f"the index ({source}) was built with {built_with}, but the matcher asked for, {wanted.uri}, is "
                f"{wanted.id}: "
                "their embeddings do not share a space. Rebuild the index with `itm run index` (it uses the "
                "champion), "
                f"or search with --matcher {needed}"
            )
        return cls(load_matcher(wanted.version_uri or wanted.uri), index)

    def search_texts(self, texts: Sequence[str], k: int) -> list[pd.DataFrame]:
        if any(not str(t).strip() for t in texts):
            raise DataError("a text query must not be empty")
        return self._results(self.matcher.embed_texts([str(t) for t in texts]).numpy(), k)

    def search_images(self, images: Sequence[Any], k: int) -> list[pd.DataFrame]:
        return self._results(self.matcher.embed_image_objects(list(images)).numpy(), k)

    def _results(self, queries: np.ndarray, k: int) -> list[pd.DataFrame]:
        if not 1 <= k <= MAX_K:
            raise ParamsError(f"k must be between 1 and {MAX_K}, got {k}")
        scores, rows = self.index.search(queries, min(k, len(self.index)))
        out = []
        for s, r in zip(scores, rows):
            keep = r >= 0
            table = self.index.items.iloc[r[keep]].reset_index(drop=True)
            table.insert(0, "score", s[keep].astype(float))
            table.insert(0, "rank", np.arange(1, int(keep.sum()) + 1))
            out.append(table)
        return out


class SearchBundle:
    """What the registered ``itm-search`` model carries: the matcher and its index (and a caption index)."""

    def __init__(self, matcher: Matcher, images: SearchIndex, captions: SearchIndex | None = None) -> None:
        self.matcher, self.images, self.captions = matcher, images, captions

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.matcher.save(folder / "matcher")
        self.images.save(folder / "index")
        if self.captions is not None:
            self.captions.save(folder / "captions")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SearchBundle:
        folder = Path(folder)
        captions = SearchIndex.load(folder / "captions") if (folder / "captions").is_dir() else None
        return cls(Matcher.load(folder / "matcher"), SearchIndex.load(folder / "index"), captions)


class SearchModel(PythonModel):
    """The served search: each input row has a ``text`` or an ``image`` (base64 image data or a
    ``data:`` URI; never a path on the server); ``k`` (param) results per row, over images, or over
    captions with the param ``target: captions``. Output per row: ``items`` (image paths or
    captions), ``scores``."""

    def load_context(self, context: Any) -> None:
        self.bundle = SearchBundle.load(context.artifacts["search"])
        self.follow = os.environ.get(FOLLOW, "") or None
        self.version = alias_version(self.follow) if self.follow else None
        self.checked = time.monotonic()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        self.follow_alias()
        with bad_request_errors():
            return self._predict(model_input, params or {})

    def follow_alias(self) -> None:
        """With ``ITM_SEARCH_FOLLOW`` (``itm-search@champion``), at most every ``ITM_SEARCH_FOLLOW_SECONDS``
        (30): when the alias has moved, load the version it names, so a served search answers with
        the index of the new champion without a restart."""
        every = float(os.environ.get(FOLLOW_SECONDS, "30"))
        if not self.follow or time.monotonic() - self.checked < every:
            return
        self.checked = time.monotonic()
        version = alias_version(self.follow)
        if version is not None and version != self.version:
            name = self.follow.split("@")[0]
            self.bundle = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().bundle
            self.version = version

    def _predict(self, frame: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
        from itm_core.data import image_from_reference

        k = int(params.get("k", 10))
        target = str(params.get("target", "images"))
        if target not in ("images", "captions"):
            raise ParamsError(f"target must be 'images' or 'captions', got {target!r}")
        index = self.bundle.images if target == "images" else self.bundle.captions
        if index is None:
            raise ParamsError("this search model has no caption index (built without captions: true)")
        searcher = Searcher(self.bundle.matcher, index)
        texts = frame["text"] if "text" in frame.columns else pd.Series([None] * len(frame))
        images = frame["image"] if "image" in frame.columns else pd.Series([None] * len(frame))
        check_rows(frame)
        items, scores = [], []
        for text, image in zip(texts, images):
            has_text = isinstance(text, str) and text != ""
            has_image = isinstance(image, str) and image != ""
            if has_text == has_image:
                raise DataError(
                    "each row needs exactly one of 'text' (a non-empty string) or 'image' (base64 image data)"
                )
            if has_text:
                (result,) = searcher.search_texts([text], k)
            else:
                (result,) = searcher.search_images([image_from_reference(image, allow_paths=False)], k)
            column = "image" if target == "images" else "caption"
            items.append([str(v) for v in result[column]])
            scores.append([float(v) for v in result["score"]])
        return pd.DataFrame({"items": items, "scores": scores})


def log_search_model(bundle: SearchBundle, registered_model: str | None) -> Any:
    """Log the bundle as the pyfunc model ``search`` of the active run, registered when asked."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    from itm_core.ops.tracking import _log_pyfunc

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "text", required=False), ColSpec("string", "image", required=False)]),
        outputs=Schema([ColSpec(Array("string"), "items"), ColSpec(Array("double"), "scores")]),
        params=ParamSchema([ParamSpec("k", "long", 10), ParamSpec("target", "string", "images")]),
    )
    example = pd.DataFrame({"text": ["a red circle in the middle", ""], "image": ["", example_image_base64()]})
    return _log_pyfunc("search", SearchModel(), bundle, registered_model, signature, example)
