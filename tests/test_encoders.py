"""The built-in encoders on real weights, and the content-addressed embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from itm_core import create, hookimpl
from itm_core.components import Encoder
from itm_core.contract.plugins import temporary_plugin
from itm_core.encode.embed import EmbeddingCache, encode, encoder_key


@pytest.fixture(scope="module")
def minilm():
    return create("encoder", "minilm")


def test_minilm_is_offline_and_semantic(minilm):
    emb = minilm.encode(["a red circle on the left", "a crimson disc at the left side", "tax law of 1987"])
    assert emb.shape == (3, 384) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2] + 0.2


def test_minilm_batch_independent(minilm):
    texts = ["a small blue square", "a big green star at the top", ""]
    together = minilm.encode(texts)
    alone = torch.cat([minilm.encode([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


def test_minilm_token_states_do_not_depend_on_the_batch_they_are_padded_in(minilm):
    """Token states come padded to max_length with zeros and a False mask, each text's real tokens as when
    it is encoded alone (the model runs on the batch padded to its longest text)."""
    texts = ["a small blue square", "a big green star at the top of the picture", ""]
    tokens, mask = minilm.encode_tokens(texts)
    assert tokens.shape == (3, 64, 384) and mask.shape == (3, 64) and mask.sum(1).tolist()[-1] == 2
    assert not tokens[~mask].any()
    for n, text in enumerate(texts):
        alone, alone_mask = minilm.encode_tokens([text])
        assert torch.equal(alone_mask[0], mask[n])
        torch.testing.assert_close(alone[0][mask[n]], tokens[n][mask[n]], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_minilm_int8_is_close_faster_variant_cached_apart(minilm):
    texts = [
        "a red circle on the left",
        "a crimson disc at the left side",
        "tax law of 1987",
        "a big green star at the top",
    ]
    int8 = create("encoder", "minilm", quantize="int8")
    emb, ref = int8.encode(texts), minilm.encode(texts)
    assert emb.shape == (4, 384) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert (emb * ref).sum(1).min() > 0.97 and not torch.allclose(emb, ref, atol=1e-3)  # int8 weights: close, not equal
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2] + 0.2
    assert encoder_key(int8) != encoder_key(minilm)
    tokens, mask = int8.encode_tokens(texts[:2])
    assert tokens.shape == (2, 64, 384) and mask[0].sum() < 64
    with pytest.raises(ValueError, match="quantize must be one of none, int8; got 'int4'"):
        create("encoder", "minilm", quantize="int4")


def test_efficientnet_features_and_pooling():
    images = [Image.new("RGB", (100, 80), "red"), Image.new("L", (64, 64), 30)]
    grid = create("encoder", "efficientnet-lite0", image_size=64)
    avg = create("encoder", "efficientnet-lite0", image_size=64, pool="avg")
    g, a = grid.encode(images), avg.encode(images)
    assert g.shape == (2, 6400) and a.shape == (2, 1280)
    assert torch.allclose(g[:, :1280], a, atol=1e-5)  # the grid adds quadrant means to the global mean
    assert not torch.allclose(g[0], g[1])
    with pytest.raises(ValueError, match="pool must be one of"):
        create("encoder", "efficientnet-lite0", pool="max")


def test_efficientnet_loader_step_hands_over_uint8_pixels_and_encodes_as_the_float_input_does():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)) for _ in range(3)]
    enc = create("encoder", "efficientnet-lite0", image_size=64).unwrapped
    step = [enc.resized(im) for im in images]
    assert step[0].dtype == np.uint8 and step[0].shape == (64, 64, 3)  # a quarter of the float input's bytes
    from_pixels = enc.encode_resized(torch.from_numpy(np.stack(step)))
    from_floats = enc.encode_preprocessed(torch.from_numpy(np.stack([enc.preprocess(im) for im in images])))
    assert torch.equal(from_pixels, from_floats)  # what explainers differentiate is what the pipeline encodes


def test_efficientnet_sees_position():
    left, right = Image.new("RGB", (64, 64), "gray"), Image.new("RGB", (64, 64), "gray")
    left.paste((255, 0, 0), (4, 20, 24, 40))
    right.paste((255, 0, 0), (40, 20, 60, 40))
    g = create("encoder", "efficientnet-lite0", image_size=64).encode([left, right])
    assert (g[0, 1280:] - g[1, 1280:]).abs().max() > (g[0, :1280] - g[1, :1280]).abs().max()


def test_tfidf_fit_state_roundtrip():
    enc = create("encoder", "tfidf", max_features=16)
    with pytest.raises(RuntimeError, match="must be fitted"):
        enc.encode(["x"])
    enc.fit(["a red circle", "a blue square", "a red square"])
    out = enc.encode(["red circle", "unknown words only"])
    assert out.shape == (2, 16) and out[0].sum() > 0 and out[1].sum() == 0
    other = create("encoder", "tfidf", max_features=16)
    other.set_state(enc.get_state())
    assert torch.equal(other.encode(["red circle"]), out[:1])


def test_color_histogram_is_normalised_and_spatial():
    enc = create("encoder", "color-histogram", bins=4, grid=2)
    half = Image.new("RGB", (64, 64), "black")
    half.paste((255, 255, 255), (32, 0, 64, 64))
    out = enc.encode([half])
    assert out.shape == (1, 4**3 * 4)
    cells = out.view(4, 64)
    assert torch.allclose(cells.sum(1), torch.ones(4))
    assert cells[0, 0] == 1.0 and cells[1, 63] == 1.0  # left cell black, right cell white


class Counting(Encoder):
    modality = "text"
    dim = 2
    calls: list[int] = []

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def encode(self, items):
        Counting.calls.append(len(items))
        return torch.tensor([[len(t) * self.scale, 1.0] for t in items])


class CountingPlugin:
    @hookimpl
    def register_encoders(self, register):
        register("counting", Counting, modality="text")


def test_cache_encodes_each_content_once(tmp_path):
    cache = EmbeddingCache(tmp_path)
    Counting.calls.clear()
    with temporary_plugin(CountingPlugin(), "counting"):
        enc = create("encoder", "counting")
        first = encode(enc, ["ab", "abc", "ab"], cache)
        assert Counting.calls == [2]  # the duplicate is encoded once
        again = encode(enc, ["abc", "ab", "abcd"], cache)
        assert Counting.calls == [2, 1]  # only the new text
        assert torch.equal(again[:2], first[[1, 0]])
        scaled = create("encoder", "counting", scale=2.0)
        assert encoder_key(scaled) != encoder_key(enc)
        assert encode(scaled, ["ab"], cache)[0, 0] == 4.0  # other options, other cache entries
        assert Counting.calls == [2, 1, 1]


def test_image_cache_is_keyed_by_file_content(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "copy.png")
    cache = EmbeddingCache(tmp_path / "cache")
    enc = create("encoder", "color-histogram", bins=2, grid=1)
    encode(enc, [tmp_path / "a.png"], cache)
    shards = list((tmp_path / "cache").rglob("*.emb.npy"))
    assert len(shards) == 1
    encode(enc, [tmp_path / "copy.png"], cache)  # same bytes under another name: no new shard
    assert list((tmp_path / "cache").rglob("*.emb.npy")) == shards
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "a.png")  # same name, new content: encoded again
    out = encode(enc, [tmp_path / "a.png"], cache)
    assert len(list((tmp_path / "cache").rglob("*.emb.npy"))) == 2 and out[0, 1] == 1.0
