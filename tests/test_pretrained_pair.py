"""A pretrained joint space registered as a matcher without training heads (``training.heads: none``):
a tiny CLIP saved locally, whose two towers become a registered matcher that is indexed, searched,
explained and served, with the scores of transformers' ``CLIPModel`` on the same weights."""

from __future__ import annotations

import json
import urllib.request

import mlflow
import pandas as pd
import pytest
import torch

from itm_core.config import (
    ComponentParams,
    ContrastiveTraining,
    DatasetParams,
    ExplainParams,
    IndexParams,
    MatcherRef,
    RetrainParams,
    SearchParams,
)
from itm_core.errors import ParamsError
from itm_core.ops.tracking import example_image_base64
from plugins import tiny_hub

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def clip_cosines(clip_dir: str, images: list, texts: list[str]) -> torch.Tensor:
    """``(images, texts)`` cosine similarities as transformers' CLIPModel computes them."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer, processor = AutoTokenizer.from_pretrained(clip_dir), AutoImageProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model(
            **tokenizer(texts, padding=True, return_tensors="pt"),
            **processor(images=[i.convert("RGB") for i in images], return_tensors="pt"),
        )
    return out.logits_per_image / model.logit_scale.exp()


def test_a_tiny_clip_pair_is_registered_indexed_searched_explained_and_served(
    prefect_server, mlflow_store, tiny_shapes_options, tmp_path
):
    from test_serving import served

    from flows.explain import explain
    from flows.index import index
    from flows.retrain import retrain
    from flows.search import search
    from itm_core import create
    from itm_core.data import load_images
    from itm_core.ops.tracking import load_matcher

    clip_dir = str(tiny_hub.clip(tmp_path / "clip"))
    pair = {
        m: ComponentParams(name="clip", options={"modality": m.split("_")[0], "model": clip_dir})
        for m in ("image_encoder", "text_encoder")
    }
    dataset = DatasetParams(options=tiny_shapes_options)
    uri = "models:/clip-pair@champion"

    # registered without training: the first version becomes champion, its test figures logged
    registered = retrain(
        RetrainParams(dataset=dataset, training=ContrastiveTraining(heads="none"), registered_model="clip-pair", **pair)
    )
    assert registered["promoted"] and registered["epochs"] == 0 and registered["model_version"] == "1"
    assert set(registered["test"]) >= {"i2t_r1", "t2i_r1", "rsum"}

    # its scores are CLIPModel's cosine similarities on the same weights
    test = create("dataset", "shapes", **tiny_shapes_options).load().split("test")
    images, texts = load_images(test.image_paths()[:4]), [test.captions_of(i)[0] for i in range(4)]
    matcher = load_matcher(uri)
    ours = matcher.similarity.score(matcher.embed_image_objects(images), matcher.embed_texts(texts))
    assert torch.allclose(ours, clip_cosines(clip_dir, images, texts), atol=1e-5)

    # indexed and searched in CLIP's space: the top score is the best cosine over the test images
    built = index(IndexParams(matcher=uri, dataset=dataset, splits=["test"], registered_model="clip-search"))
    assert built["images"] == len(test) and built["matcher"] == "clip-pair v1"
    found = search(SearchParams(text=texts[0], k=3, index=built["run_id"], matcher=uri))
    every = matcher.similarity.score(matcher.embed_texts(texts[:1]), matcher.embed_images(test.image_paths()))[0]
    assert found["results"][0]["score"] == pytest.approx(float(every.max()), abs=1e-4)

    # explained: the score explained is the pair's cosine
    explained = explain(
        ExplainParams(matcher=MatcherRef(model_uri=uri), dataset=dataset, explainers=["occlusion", "word-deletion"])
    )
    first = load_images([test.image_path(0)])
    expected = clip_cosines(clip_dir, first, [test.captions_of(0)[0]])[0, 0]
    assert explained["score"] == pytest.approx(float(expected), abs=1e-4) and explained["words"]

    # served: the scoring endpoint answers with the same cosines
    frame = pd.DataFrame({"image": [example_image_base64()], "text": ["a red circle in the middle"]})
    with served(uri, mlflow_store, tmp_path) as port:
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            (row,) = json.loads(answer.read())["predictions"]
    local = mlflow.pyfunc.load_model(uri).predict(frame)
    assert row["score"] == pytest.approx(float(local["score"][0]), abs=1e-5)


def test_heads_none_needs_towers_that_share_a_space(prefect_server, mlflow_store, tiny_shapes_options, tmp_path):
    from flows.retrain import retrain

    clip_dir = str(tiny_hub.clip(tmp_path / "clip"))
    params = RetrainParams(
        dataset=DatasetParams(options=tiny_shapes_options),
        training=ContrastiveTraining(heads="none"),
        image_encoder=ComponentParams(name="clip", options={"modality": "image", "model": clip_dir}),
        text_encoder=ComponentParams(name="tfidf", options={"max_features": 64}),
    )
    with pytest.raises(ParamsError, match=r"need.* towers that share a joint space; .* 'tfidf' has None"):
        retrain.fn(params)
    assert mlflow.search_runs(search_all_experiments=True).empty  # refused before any run opened
