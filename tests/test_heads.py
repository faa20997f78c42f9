"""Fusion methods, the ITM and VQA heads, hard-negative mining, reranking and the probe."""

from __future__ import annotations

import pytest
import torch

from itm_core import create
from itm_core.encode.features import ModalityFeatures
from itm_core.models.head_training import HeadTraining, ITMOptions, train_itm, train_vqa
from itm_core.models.heads import (
    FusionHead,
    ITMHead,
    PairSet,
    QASet,
    evaluate_vqa,
    hard_negatives,
    probe_accuracy,
    rerank,
)
from itm_core.models.retrieval import Ranks


def test_weighted_fusion_fixed_or_learned():
    learned = create("fusion", "weighted", image_dim=3, text_dim=2, dim=4, weight=0.25)
    fixed = create("fusion", "weighted", image_dim=3, text_dim=2, dim=4, weight=0.25, learn_weight=False)
    assert learned.weight == pytest.approx(0.25) and fixed.weight == pytest.approx(0.25)
    assert "weight_logit" in dict(learned.unwrapped.named_parameters())
    assert "weight_logit" not in dict(fixed.unwrapped.named_parameters())
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        create("fusion", "weighted", image_dim=3, text_dim=2, weight=1.0)


def test_mean_fusion_is_the_average_of_projections():
    f = create("fusion", "mean", image_dim=3, text_dim=2, dim=4)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    m = f.unwrapped
    assert torch.allclose(f.fuse(x, y), (m.image_proj(x) + m.text_proj(y)) / 2)


def test_cross_attention_ignores_padding_and_uses_patch_positions():
    torch.manual_seed(0)
    f = create("fusion", "cross-attention", image_dim=6, text_dim=5, dim=8, heads=2, dropout=0.0)
    f.unwrapped.eval()
    image, text = torch.randn(1, 4, 6), torch.randn(1, 3, 5)
    mask = torch.tensor([[True, True, False]])
    padded = torch.cat([text[:, :2], torch.randn(1, 1, 5) * 100], 1)
    with torch.no_grad():
        assert torch.allclose(f.fuse(image, text, text_mask=mask), f.fuse(image, padded, text_mask=mask), atol=1e-5)
        swapped = image[:, [1, 0, 2, 3]]
        assert not torch.allclose(f.fuse(image, text), f.fuse(swapped, text), atol=1e-4)


def test_hard_negatives_skip_positives_and_duplicates():
    image_emb = torch.eye(3)
    text_emb = torch.tensor([[1.0, 0.5, 0], [0.2, 1, 0], [0, 1, 0.3], [0.1, 0, 1]])
    owner = torch.tensor([0, 1, 1, 2])
    caps, imgs = hard_negatives(image_emb, text_emb, owner, k=1)
    assert caps[:, 0].tolist() == [1, 0, 2] and imgs[:, 0].tolist() == [1, 0, 2, 0]
    caps, _ = hard_negatives(
        image_emb, text_emb, owner, k=1, image_group=torch.tensor([0, 0, 1])
    )  # images 0 and 1 are the same scene
    assert caps[0, 0] == 3 and caps[1, 0] == 3


def test_probe_accuracy_by_hand():
    out = probe_accuracy(
        torch.tensor([1.0, 1.0, 0.0, 2.0]),
        {"neg_color": torch.tensor([0.0, 2.0, 0.0, 1.0]), "neg_shape": torch.tensor([0.0, 0.0, -1.0, 1.0])},
    )
    assert out == {"probe_accuracy_color": 0.5, "probe_accuracy_shape": 1.0, "probe_accuracy": 0.75}  # ties fail


class Oracle(ITMHead):
    """An ITM head that knows the answer: for reranking tests."""

    def __init__(self, owner):
        super().__init__(create("fusion", "mean", image_dim=2, text_dim=2, dim=2))
        self.owner = owner

    def predict_pairs(self, data, image_rows, text_rows, batch=1024):
        return (self.owner[torch.as_tensor(text_rows)] == torch.as_tensor(image_rows)).float()


def test_rerank_moves_true_matches_inside_top_k_only():
    owner = torch.tensor([0, 1, 2])
    # contrastive similarity ranks every caption second: its own image is each caption's second choice
    image_emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), dim=-1)
    text_emb = torch.nn.functional.normalize(torch.tensor([[0.8, 0.6], [0.6, 0.8], [1.0, 0.0]]), dim=-1)
    feats = ModalityFeatures(torch.zeros(3, 2))
    data = PairSet(feats, ModalityFeatures(torch.zeros(3, 2)), owner, image_emb, text_emb)
    base = Ranks(i2t=torch.tensor([2, 2, 3]), t2i=torch.tensor([2, 2, 3]))
    reranked = rerank(Oracle(owner), data, k=2, base=base)
    top2_i2t = (image_emb @ text_emb.T).topk(2, dim=1).indices
    for i in range(3):
        inside = bool((owner[top2_i2t[i]] == i).any())
        assert reranked.i2t[i] == (1 if inside else base.i2t[i])


def _toy_pairs(n: int, seed: int) -> PairSet:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 6, generator=g)
    owner = torch.arange(n).repeat_interleave(2)
    text = image[owner][:, :4] + 0.05 * torch.randn(2 * n, 4, generator=g)
    emb_i = torch.nn.functional.normalize(image[:, :4], dim=-1)
    emb_t = torch.nn.functional.normalize(text, dim=-1)
    return PairSet(ModalityFeatures(image), ModalityFeatures(text), owner, emb_i, emb_t)


def test_itm_head_learns_to_separate_matches():
    from itm_core.models.heads import evaluate_itm

    train, val = _toy_pairs(128, 1), _toy_pairs(32, 2)
    head = ITMHead(create("fusion", "concat-mlp", image_dim=6, text_dim=4, dim=16), prior_scale=0.0)
    before = evaluate_itm(head, val)["itm_auc"]
    result = train_itm(
        head,
        train,
        val,
        HeadTraining(epochs=15, batch_size=16, lr=3e-3, patience=15, input_dropout=0.0),
        ITMOptions(hard_pool=4),
    )
    after = evaluate_itm(head, val)
    assert after["itm_auc"] > max(before, 0.8) and result.best_epoch >= 1


def test_vqa_head_learns_and_reports_per_type():
    g = torch.Generator().manual_seed(0)
    image = ModalityFeatures(torch.randn(64, 5, generator=g))
    questions = ModalityFeatures(torch.eye(2).repeat(64, 1))  # two question kinds per image
    q_image = torch.arange(64).repeat_interleave(2)
    answer = torch.where(
        torch.arange(128) % 2 == 0, (image.pooled[q_image, 0] > 0).long(), 2 + (image.pooled[q_image, 1] > 0).long()
    )
    kinds = ["sign0" if n % 2 == 0 else "sign1" for n in range(128)]
    data = QASet(image, questions, q_image, answer, kinds)
    head = FusionHead(create("fusion", "concat-mlp", image_dim=5, text_dim=2, dim=16), outputs=4)
    train_vqa(head, data, data, HeadTraining(epochs=30, batch_size=32, lr=3e-3, patience=30, input_dropout=0.0))
    out = evaluate_vqa(head, data)
    assert set(out) == {"vqa_accuracy", "vqa_accuracy_sign0", "vqa_accuracy_sign1"} and out["vqa_accuracy"] > 0.9


def test_cross_attention_maps_through_the_head_follow_the_patches():
    """The head's attention maps: one distribution over patches per pair; padding text tokens do not count."""
    torch.manual_seed(0)
    head = ITMHead(create("fusion", "cross-attention", image_dim=6, text_dim=5, dim=8, heads=2, dropout=0.0))
    image = ModalityFeatures(torch.randn(3, 6), torch.randn(3, 4, 6), torch.ones(3, 4, dtype=torch.bool))
    mask = torch.tensor([[True, True, False], [True, True, True]])
    text = ModalityFeatures(torch.randn(2, 5), torch.randn(2, 3, 5), mask)
    head.fit_statistics(image, text)
    maps = head.attention_maps(image, [0, 2], text, [0, 1])
    assert maps.shape == (2, 4) and torch.allclose(maps.sum(1), torch.ones(2))
    padded = ModalityFeatures(text.pooled, torch.cat([text.tokens[:, :2], 100 * torch.randn(2, 1, 5)], 1), mask)
    assert torch.allclose(head.attention_maps(image, [0], padded, [0]), maps[:1], atol=1e-5)
    assert (
        ITMHead(create("fusion", "mean", image_dim=6, text_dim=5, dim=8)).attention_maps(image, [0], text, [0]) is None
    )


def _ordered_pairs(copies: int, seed: int) -> PairSet:
    """Images of an ordered pair of colours (left, right); each caption is two word tokens, left colour
    first, whose features carry their position. The swapped caption has the same mean (pooled)
    feature, so only a head that reads the tokens can tell it from the true one."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    words, places = (
        torch.randn(4, 8, generator=torch.Generator().manual_seed(0)),
        torch.randn(2, 8, generator=torch.Generator().manual_seed(1)),
    )
    pairs = [(a, b) for a in range(4) for b in range(4) if a != b] * copies
    image = torch.stack(
        [torch.cat([F.one_hot(torch.tensor(a), 4), F.one_hot(torch.tensor(b), 4)]).float() for a, b in pairs]
    )
    image = image + 0.1 * torch.randn(image.shape, generator=g)

    def said(first: int, second: int) -> torch.Tensor:  # two words and a padding token (masked out) of noise
        return torch.stack([words[first] + places[0], words[second] + places[1], 10 * torch.randn(8, generator=g)])

    tokens = torch.stack([said(a, b) for a, b in pairs] + [said(b, a) for a, b in pairs])
    mask = torch.tensor([[True, True, False]]).expand(len(tokens), 3)
    pooled = tokens[:, :2].mean(1)
    n = len(pairs)
    return PairSet(
        ModalityFeatures(image),
        ModalityFeatures(pooled, tokens, mask),
        torch.arange(n),
        F.normalize(image, dim=-1),
        F.normalize(pooled, dim=-1),
        negatives=n + torch.arange(n).unsqueeze(1),
        canonical=torch.arange(n),
    )


@pytest.mark.slow
def test_text_reader_tells_word_order_that_the_pooled_feature_loses():
    from itm_core.models.token_reader import TokenReader

    train, val = _ordered_pairs(8, seed=1), _ordered_pairs(2, seed=2)
    n = len(val.image)
    rows = torch.arange(n)
    training = HeadTraining(epochs=25, batch_size=16, lr=3e-3, patience=25, input_dropout=0.0)
    options = ITMOptions(hard_pool=4, itm_select="auc")
    wins = {}
    for reader in (None, TokenReader(8, 16, 16, layers=1, queries=2)):
        torch.manual_seed(0)
        head = ITMHead(
            create("fusion", "concat-mlp", image_dim=8, text_dim=8 + (16 if reader else 0), dim=16),
            prior_scale=0.0,
            text_reader=reader,
        )
        train_itm(head, train, train, training, options)
        true, swapped = head.predict_pairs(val, rows, rows), head.predict_pairs(val, rows, rows + n)
        wins["tokens" if reader else "pooled"] = float((true > swapped + 1e-4).float().mean())
    assert wins["pooled"] == 0.0  # the same pooled feature (up to rounding): the same score, never clearly higher
    assert wins["tokens"] >= 0.9, wins
    with pytest.raises(ValueError, match="reads token features itself"):
        ITMHead(
            create("fusion", "cross-attention", image_dim=6, text_dim=5, dim=8, heads=2),
            text_reader=TokenReader(5, 8, 8),
        )


def test_the_shared_reader_reads_every_text_as_the_trained_head_did():
    """``reader_of``: each text's pooled feature followed by the head's reader vector, the same read in
    chunks of any size (each chunk trimmed to its own longest text) as in one batch, in eval mode."""
    from itm_core.judge.shared_reader import reader_of
    from itm_core.models.token_reader import TokenReader

    torch.manual_seed(0)
    lengths = torch.tensor([1, 5, 2, 3, 5, 1, 4])
    text = ModalityFeatures(
        torch.randn(7, 10), torch.randn(7, 6, 5), torch.arange(6).expand(7, 6) < lengths.unsqueeze(1)
    )
    head = ITMHead(create("fusion", "mean", image_dim=12, text_dim=10 + 8, dim=8), text_reader=TokenReader(5, 8, 8))
    head.fit_statistics(ModalityFeatures(torch.randn(7, 12)), text)
    whole, chunked = reader_of(head)(text), reader_of(head, rows=2)(text)
    assert not head.text_reader.training and whole.pooled.shape == (7, 18)
    assert torch.equal(whole.pooled[:, :10], text.pooled) and whole.tokens is text.tokens
    with torch.no_grad():
        expected = head.text_reader(head.token_norm(text.tokens), text.mask)
    torch.testing.assert_close(whole.pooled[:, 10:], expected)
    torch.testing.assert_close(chunked.pooled, whole.pooled)
    with pytest.raises(ValueError, match="needs token features for every text"):
        reader_of(head)(ModalityFeatures(torch.randn(3, 10)))


@pytest.mark.parametrize("name", ["mean", "weighted", "concat-mlp", "gated", "bilinear", "cross-attention"])
def test_factored_heads_embed_each_distinct_row_once_and_score_as_whole_pairs_do(name):
    from itm_core.models.token_reader import TokenReader

    torch.manual_seed(0)
    tokens = name == "cross-attention"
    image = ModalityFeatures(torch.randn(5, 12), torch.randn(5, 4, 6), torch.ones(5, 4, dtype=torch.bool))
    text = ModalityFeatures(torch.randn(7, 10), torch.randn(7, 3, 5), torch.arange(3).expand(7, 3) < 2)
    reader = None if tokens else TokenReader(5, 8, 8)
    dims = {"image_dim": 6, "text_dim": 5} if tokens else {"image_dim": 12, "text_dim": 10 + 8}
    head = ITMHead(create("fusion", name, dim=8, **dims), input_dropout=0.3, text_reader=reader)
    assert head.factored
    head.fit_statistics(image, text)
    head.eval()
    rows_i, rows_t = torch.tensor([0, 0, 0, 3, 4, 3, 1]), torch.tensor([2, 5, 6, 2, 2, 0, 1])  # repeats on both sides
    embedded = []
    head.fusion.embed_image = lambda x, f=head.fusion.embed_image: embedded.append(len(x)) or f(x)
    with torch.no_grad():
        factored = head(image, rows_i, text, rows_t)
        head.factored = False
        whole = head(image, rows_i, text, rows_t)
    assert embedded == [4, 7]  # factored: the 4 distinct images of the 7 pairs, once each; whole: every pair's
    assert torch.allclose(factored, whole, atol=1e-5)


def test_token_pairs_are_scored_shortest_texts_first_and_returned_in_their_order():
    torch.manual_seed(0)
    image = ModalityFeatures(torch.randn(4, 12), torch.randn(4, 4, 6), torch.ones(4, 4, dtype=torch.bool))
    lengths = torch.tensor([5, 1, 3, 2, 4, 1])
    text = ModalityFeatures(torch.randn(6, 10), torch.randn(6, 5, 5), torch.arange(5).expand(6, 5) < lengths[:, None])
    head = ITMHead(create("fusion", "cross-attention", image_dim=6, text_dim=5, dim=8, heads=2))
    head.fit_statistics(image, text)
    data = PairSet(image, text, torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(4, 3), torch.randn(6, 3))
    rows_i, rows_t = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), torch.tensor([0, 1, 2, 3, 4, 5, 5, 0])
    calls, parts = [], []
    from_parts, make_parts = head.from_parts, head.parts
    head.parts = lambda *args: parts.append(len(args[3])) or make_parts(*args)
    head.from_parts = lambda made, rows=None: calls.append(lengths[rows_t[rows]].tolist()) or from_parts(made, rows)
    in_twos = head.predict_pairs(data, rows_i, rows_t, batch=2)
    assert parts == [8]  # every distinct image and text embedded once, before the batches
    assert calls == [[1, 1], [1, 2], [3, 4], [5, 5]]  # each batch pads to its own longest text
    with torch.no_grad():
        assert torch.allclose(in_twos, head.score(data, rows_i, rows_t), atol=1e-5)
