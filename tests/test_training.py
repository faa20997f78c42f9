"""Contrastive training of matcher heads, reproducibility, and matcher persistence."""

from __future__ import annotations

import pytest
import torch

from itm_core.encode.embed import FeatureSplit
from itm_core.models.matcher import Matcher
from itm_core.models.training import ContrastiveConfig, clip_loss, evaluate_features, train_contrastive


def synthetic(n_images: int, seed: int) -> FeatureSplit:
    """Images in 12 dims; two noisy captions per image in 10 dims, a fixed linear map apart."""
    g = torch.Generator().manual_seed(seed)
    mapping = torch.Generator().manual_seed(99)
    w = torch.randn(12, 10, generator=mapping)
    image = torch.randn(n_images, 12, generator=g)
    owner = torch.arange(n_images).repeat_interleave(2)
    text = image[owner] @ w + 0.1 * torch.randn(len(owner), 10, generator=g)
    return FeatureSplit(image, text, owner)


def new_matcher() -> Matcher:
    torch.manual_seed(0)
    return Matcher({"name": "img"}, {"name": "txt"}, 12, 10, embed_dim=16, hidden_dim=32, dropout=0.0)


def test_clip_loss_prefers_the_diagonal():
    good = torch.eye(4) * 10
    assert clip_loss(good) < clip_loss(torch.zeros(4, 4)) < clip_loss(-good)


def test_training_learns_and_keeps_the_best_epoch():
    train, val, test = synthetic(200, 1), synthetic(50, 2), synthetic(50, 3)
    matcher = new_matcher()
    before = evaluate_features(matcher, test)
    seen = []
    result = train_contrastive(matcher, train, val, ContrastiveConfig(epochs=30, batch_size=32, lr=3e-3, patience=30), lambda e, m: seen.append(e))
    after = evaluate_features(matcher, test)
    assert after["i2t_r1"] > 0.8 and after["t2i_r1"] > 0.8
    assert after["rsum"] > before["rsum"] + 200
    assert seen == list(range(1, len(result.history) + 1))
    best = max(h["val_rsum"] for h in result.history)
    assert result.best_value == best and evaluate_features(matcher, val)["rsum"] == pytest.approx(best)
    assert {"train_loss", "temperature", "val_i2t_r1", "val_t2i_medr"} <= set(result.history[0])


def test_early_stopping():
    train, val = synthetic(64, 1), synthetic(16, 5)
    val = FeatureSplit(val.image, torch.randn_like(val.text), val.caption_image)  # nothing to learn on val
    result = train_contrastive(new_matcher(), train, val, ContrastiveConfig(epochs=50, batch_size=16, patience=2))
    assert len(result.history) == result.best_epoch + 2 < 50


def test_time_limit_ends_training_after_the_epoch_that_passes_it():
    train, val = synthetic(64, 1), synthetic(16, 2)
    result = train_contrastive(new_matcher(), train, val, ContrastiveConfig(epochs=50, batch_size=16, patience=50, time_limit_s=1e-9))
    assert len(result.history) == 1 and result.best_epoch == 1


def test_a_run_of_a_few_steps_trains():
    train, val = synthetic(32, 1), synthetic(16, 2)
    result = train_contrastive(new_matcher(), train, val, ContrastiveConfig(epochs=1, batch_size=16))  # 2 passes x 2 batches
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0


def test_training_is_reproducible_on_cpu():
    train, val = synthetic(64, 1), synthetic(16, 2)
    states = []
    for _ in range(2):
        m = new_matcher()
        train_contrastive(m, train, val, ContrastiveConfig(epochs=3, batch_size=16, seed=7))
        states.append(m.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_matcher_save_and_load(tmp_path):
    from itm_core import create

    tfidf = create("encoder", "tfidf", max_features=32)
    tfidf.fit(["a red circle", "a blue square"])
    hist = create("encoder", "color-histogram", bins=2, grid=1)
    matcher = Matcher({"name": "color-histogram", "options": {"bins": 2, "grid": 1}}, {"name": "tfidf", "options": {"max_features": 32}}, 8, 32, embed_dim=4, hidden_dim=0)
    matcher.attach_encoders(hist, tfidf).eval()
    matcher.save(tmp_path / "m")
    loaded = Matcher.load(tmp_path / "m")
    texts = ["a red circle", "blue"]
    assert torch.equal(loaded.embed_texts(texts), matcher.embed_texts(texts))
    assert torch.equal(loaded.logit_scale, matcher.logit_scale)
    with pytest.raises(FileNotFoundError, match="not a saved matcher"):
        Matcher.load(tmp_path)
