"""Search: the FAISS index (exact equals brute force; approximate kinds recall), the index and search
flows, `itm search`, the version check, and the registered `itm-search` model with bad requests."""

from __future__ import annotations

import base64
import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from itm_core.config import (
    ComponentParams,
    ContrastiveTraining,
    DatasetParams,
    IndexParams,
    RetrainParams,
    SearchParams,
)
from itm_core.models.matcher import JointSimilarity
from itm_core.models.retrieval import top_k
from itm_core.models.search_index import IndexSettings, SearchIndex, SearchIndexError

CLASSIC = dict(
    image_encoder=ComponentParams(name="color-histogram"),
    text_encoder=ComponentParams(name="tfidf", options={"max_features": 256}),
)


def clustered(n: int, dim: int, seed: int = 0, centres: int = 200) -> np.ndarray:
    """Unit vectors around random centres: embeddings have clusters, uniform noise does not."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at(k: int, found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


def test_flat_index_equals_brute_force_top_k(tmp_path):
    vectors = clustered(3000, 32)
    queries = clustered(50, 32, seed=1)
    items = pd.DataFrame({"image": [f"img{i}.png" for i in range(len(vectors))]})
    index = SearchIndex.build(vectors, items, IndexSettings(kind="auto"))
    assert index.kind == "flat"
    scores, rows = index.search(queries, 10)
    ref_s, ref_i = top_k(torch.from_numpy(queries), torch.from_numpy(vectors), JointSimilarity(), 10)
    assert (rows == ref_i.numpy()).all() and np.allclose(scores, ref_s.numpy(), atol=1e-5)
    loaded = SearchIndex.load(index.save(tmp_path / "ix"))
    assert (loaded.search(queries, 10)[1] == rows).all() and list(loaded.items["image"]) == list(items["image"])
    with pytest.raises(SearchIndexError, match="k must be between 1 and the index size"):
        index.search(queries, 0)
    with pytest.raises(SearchIndexError, match="not a saved search index"):
        SearchIndex.load(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_indexes_recall(kind):
    """Small-scale check of the approximate kinds (make bench measures 1,000,000 vectors)."""
    vectors = clustered(20000, 64)
    queries = clustered(200, 64, seed=2)
    items = pd.DataFrame({"image": np.arange(len(vectors)).astype(str)})
    exact = SearchIndex.build(vectors, items, IndexSettings(kind="flat")).search(queries, 10)[1]
    index = SearchIndex.build(
        vectors, items, IndexSettings(kind="auto", exact_below=1000, hnsw_below=10000 if kind == "ivfpq" else 10**9)
    )
    assert index.kind == kind
    assert recall_at(10, index.search(queries, 10)[1], exact) >= 0.95


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_index_search_flows_cli_version_check_and_model(
    prefect_server, mlflow_store, tiny_shapes_options, tmp_path, monkeypatch
):
    from cli.main import app
    from flows.index import index
    from flows.retrain import retrain
    from flows.search import search
    from itm_core import create
    from itm_core.ops.search import Searcher
    from itm_core.ops.tracking import load_matcher

    dataset = DatasetParams(options={**tiny_shapes_options, "n_train": 160})
    trained = retrain(RetrainParams(dataset=dataset, training=ContrastiveTraining(epochs=8, batch_size=32), **CLASSIC))
    built = index(IndexParams(dataset=dataset, splits=["test"], captions=True))
    assert built["kind"] == "flat" and built["images"] == tiny_shapes_options["n_test"] and built["promoted"]
    run = MlflowClient().get_run(built["run_id"])
    test = create("dataset", "shapes", **dataset.options).load().split("test")
    assert (
        run.data.tags["dataset.fingerprint"] == test.fingerprint() and run.data.tags["matcher.id"] == "itm-matcher v1"
    )
    assert {"index", "captions"} <= {a.path for a in MlflowClient().list_artifacts(built["run_id"])}

    # exact index: the same top k as brute-force retrieval in the matcher's space; top-1 as often right as t2i R@1
    searcher = Searcher.open()
    matcher = load_matcher("models:/itm-matcher@champion")
    img = matcher.embed_images([str(p) for p in test.image_paths()])
    txt = matcher.embed_texts(test.captions)
    ref_scores, ref_rows = top_k(txt, img, matcher.similarity, 5)
    results = searcher.search_texts(test.captions, 5)
    paths = [str(p.resolve()) for p in test.image_paths()]
    assert [list(r["image"]) for r in results] == [[paths[i] for i in row] for row in ref_rows.tolist()]
    assert np.allclose(np.stack([r["score"] for r in results]), ref_scores.numpy(), atol=1e-5)
    top1 = np.mean([r["image"][0] == paths[o] for r, o in zip(results, test.caption_image)])
    assert top1 == pytest.approx(trained["test"]["t2i_r1"], abs=1e-6)

    # image queries: an image finds itself first, and its captions in the caption index
    (similar,) = searcher.search_images([Image.open(paths[0])], 3)
    assert similar["image"][0] == paths[0]
    (described,) = Searcher.open(target="captions").search_images([Image.open(paths[0])], 5)
    assert len(described) == 5 and set(described["caption"]) <= set(test.captions)

    # `itm search` and the search flow
    out = CliRunner().invoke(app, ["search", test.captions[0], "-k", "3", "--index", built["run_id"]])
    assert out.exit_code == 0, out.output
    assert "built with itm-matcher v1" in out.output
    out = CliRunner().invoke(app, ["search", "   "])
    assert out.exit_code == 2 and "empty" in out.output
    # a session: queries one per line (texts, image paths), a bad one answered and passed over
    queries = f"{test.captions[0]}\n\n{paths[0]}\n{paths[0]}.missing.png\n{test.captions[1]}\n"
    out = CliRunner().invoke(app, ["search", "--json", "-k", "3", "--index", built["run_id"]], input=queries)
    assert out.exit_code == 0, out.output
    answers = [json.loads(line) for line in out.output.splitlines()]
    assert [a["query"] for a in answers] == [test.captions[0], paths[0], f"{paths[0]}.missing.png", test.captions[1]]
    assert [r["image"] for r in answers[0]["results"]] == list(results[0]["image"][:3])
    assert answers[1]["results"][0]["image"] == paths[0] and answers[1]["ms"] > 0
    assert answers[2]["error"] == f"image file not found: {paths[0]}.missing.png" and len(answers[3]["results"]) == 3
    found = search(SearchParams(text=test.captions[0], k=4))
    assert [r["image"] for r in found["results"]] == list(results[0]["image"][:4])
    assert "search_results.png" in {a.path for a in MlflowClient().list_artifacts(found["run_id"])}

    # a newer champion: the old index is refused, naming the version it needs
    second = retrain(
        RetrainParams(dataset=dataset, training=ContrastiveTraining(epochs=2, batch_size=32, seed=1), **CLASSIC)
    )
    MlflowClient().set_registered_model_alias("itm-matcher", "champion", second["model_version"])
    with pytest.raises(
        SearchIndexError,
        match=r"built with itm-matcher v1, but the matcher asked for, models:/itm-matcher@champion, is itm-matcher "
        r"v2.*--matcher models:/itm-matcher/1",
    ):
        Searcher.open()
    out = CliRunner().invoke(app, ["search", "a red circle"])
    assert out.exit_code == 2 and "--matcher models:/itm-matcher/1" in out.output
    assert len(Searcher.open(matcher_uri="models:/itm-matcher/1").search_texts(["a red circle"], 2)[0]) == 2

    # the registered search model: text or base64 image in, top k out; bad requests are MLflow 400s with the reason
    # (loaded as a server loads it when told to follow its alias)
    monkeypatch.setenv("ITM_SEARCH_FOLLOW", "itm-search@champion")
    monkeypatch.setenv("ITM_SEARCH_FOLLOW_SECONDS", "0")
    model = mlflow.pyfunc.load_model("models:/itm-search@champion")
    frame = pd.DataFrame({"text": [test.captions[0], ""], "image": ["", _png_base64(Image.open(paths[0]))]})
    served = model.predict(frame, params={"k": 3})
    assert list(served["items"][0]) == list(results[0]["image"][:3]) and served["items"][1][0] == paths[0]
    assert (
        model.predict(pd.DataFrame({"text": ["a red circle"]}), params={"k": 2, "target": "captions"})["items"][0][0]
        in test.captions
    )
    bomb = Image.new("RGB", (8000, 6000))  # 48 megapixels, over the 40 megapixel limit; compresses to a few KB
    bad = {
        "empty text": (pd.DataFrame({"text": ["  "]}), {}, "a text query must not be empty"),
        "neither text nor image": (pd.DataFrame({"text": [""], "image": [""]}), {}, "exactly one of 'text'"),
        "bad base64": (pd.DataFrame({"image": ["not base64!"]}), {}, "not base64-encoded image data"),
        "a server path": (pd.DataFrame({"image": [paths[0]]}), {}, "not base64-encoded image data"),
        "too many pixels": (pd.DataFrame({"image": [_png_base64(bomb)]}), {}, "decompression bomb"),
        "k out of range": (pd.DataFrame({"text": ["a red circle"]}), {"k": 5000}, "k must be between 1 and 1000"),
    }
    for what, (frame, params, reason) in bad.items():
        with pytest.raises(MlflowException, match=reason) as error:
            model.predict(frame, params=params)
        assert error.value.error_code == "INVALID_PARAMETER_VALUE", what

    # the index of the new champion (v2) becomes itm-search's champion: the loaded model follows it
    assert model.unwrap_python_model().version == "1"
    rebuilt = index(IndexParams(dataset=dataset, splits=["test"]))
    assert rebuilt["promoted"] and rebuilt["matcher"] == "itm-matcher v2"
    model.predict(pd.DataFrame({"text": ["a red circle"]}), params={"k": 2})
    assert model.unwrap_python_model().version == rebuilt["model_version"]
    assert model.unwrap_python_model().bundle.images.meta["matcher_id"] == "itm-matcher v2"
