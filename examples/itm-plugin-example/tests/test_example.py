"""The example plugin's own tests: every component passes the workbench's conformance kit, and the
pieces work together."""

import pytest

from itm_core import create
from itm_core.testing import assert_conforms

COMPONENTS = [
    ("encoder", "colour-names", {"modality": "image"}),
    ("encoder", "colour-names", {"modality": "text"}),
    ("similarity", "neg-euclidean", {}),
    ("fusion", "hadamard", {"image_dim": 8, "text_dim": 8, "dim": 4}),
    ("generator", "colour-namer", {}),
    ("metric", "exact-match", {}),
    ("dataset", "colour-swatches", {"per_colour": 5}),
    ("explainer", "quadrants", {}),
]


@pytest.mark.parametrize(("kind", "name", "options"), COMPONENTS)
def test_conforms(kind, name, options, tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_HOME", str(tmp_path))
    assert_conforms(kind, name, **options)


def test_zero_shot_retrieval_and_captions(tmp_path):
    from itm_core.data import load_images
    from itm_core.judge.evaluation import EncoderPair, evaluate_retrieval

    data = create("dataset", "colour-swatches", per_colour=5, root=str(tmp_path)).load().split("test")
    pair = EncoderPair(
        create("encoder", "colour-names", modality="image"),
        create("encoder", "colour-names", modality="text"),
        create("similarity", "neg-euclidean"),
    )
    metrics = evaluate_retrieval(pair, data)
    assert metrics["i2t_r1"] == 1.0  # every swatch's own colour words are nearest
    captions = create("generator", "colour-namer").generate(load_images(data.image_paths()))
    references = [data.captions_of(i) for i in range(len(data))]
    assert create("metric", "exact-match").compute(captions, references)["exact_match"] == 1.0
