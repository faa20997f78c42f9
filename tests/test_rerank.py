"""Reranking the contrastive top-k with ITM logit + weight x similarity, chosen on validation; in-batch
hard negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from itm_core import create
from itm_core.encode.features import ModalityFeatures
from itm_core.models.head_training import HeadTraining, ITMOptions, in_batch_negatives, listwise_loss, train_itm
from itm_core.models.heads import ITMHead, PairSet, hard_negatives
from itm_core.models.rerank import NO_RERANK, Candidates, Choice, candidates, choose, choose_both, report, reranked
from itm_core.models.retrieval import Ranks, ranks


class Dot:
    @staticmethod
    def score(a, b):
        return a @ b.T


class NoisyOracle(ITMHead):
    """An ITM head that knows the answer up to noise of ``noise`` (0: exact), deterministic per pair."""

    def __init__(self, owner, noise: float, seed: int = 0):
        super().__init__(create("fusion", "mean", image_dim=2, text_dim=2, dim=2))
        self.owner, self.noise, self.seed = owner, noise, seed

    def score(self, data, image_rows, text_rows):
        g = torch.Generator().manual_seed(self.seed)
        table = torch.randn(len(data.image_emb), len(self.owner), generator=g)
        return (self.owner[text_rows] == image_rows).float() + self.noise * table[image_rows, text_rows]

    def predict_pairs(self, data, image_rows, text_rows, batch=1024):
        return self.score(data, torch.as_tensor(image_rows), torch.as_tensor(text_rows))


def _pairs(n_img: int, seed: int, spread: float = 0.6) -> tuple[PairSet, Ranks]:
    g = torch.Generator().manual_seed(seed)
    owner = torch.arange(n_img).repeat_interleave(3)
    image = F.normalize(torch.randn(n_img, 16, generator=g), dim=-1)
    text = F.normalize(image[owner] + spread * torch.randn(len(owner), 16, generator=g), dim=-1)
    data = PairSet(
        ModalityFeatures(torch.zeros(n_img, 2)), ModalityFeatures(torch.zeros(len(owner), 2)), owner, image, text
    )
    return data, ranks(image, text, owner, Dot)


def test_candidate_ranks_by_hand():
    # one query, four candidates in contrastive order; the answer is the third
    c = Candidates(
        top=torch.tensor([[5, 6, 7, 8]]),
        similarity=torch.tensor([[0.9, 0.8, 0.7, 0.1]]),
        itm=torch.tensor([[0.0, 1.0, 0.95, 3.0]]),
        hits=torch.tensor([[False, False, True, False]]),
        base=torch.tensor([3]),
    )
    assert c.ranks(0).tolist() == [3]  # not reranked
    assert c.ranks(4).tolist() == [3]  # ITM alone: 8, 6, 7, 5
    assert c.ranks(3).tolist() == [2]  # ITM alone over the top 3: 6, 7, 5
    assert c.ranks(4, 1.0).tolist() == [3]  # 8 (3.1), 6 (1.8), 7 (1.65)
    assert c.ranks(3, 1.0).tolist() == [2]
    assert c.ranks(4, 1000.0).tolist() == [3]  # the contrastive order again
    assert c.ranks(2).tolist() == [3]  # the answer is outside the top 2: its contrastive rank stays


def test_candidates_match_the_contrastive_ranks_and_the_oracle_fixes_them():
    data, base = _pairs(60, 0)
    found = candidates(NoisyOracle(data.caption_image, 0.0), data, 8, base)
    for d in ("i2t", "t2i"):
        c = found[d]
        assert torch.equal(c.ranks(0), getattr(base, d))
        # weight so large that the ITM logit only breaks ties: the contrastive ranks
        assert torch.equal(c.ranks(8, 1e6), getattr(base, d))
        # the exact oracle puts the answer first whenever it is among the candidates
        inside = getattr(base, d) <= 8
        assert (c.ranks(8)[inside] == 1).all() and torch.equal(c.ranks(8)[~inside], getattr(base, d)[~inside])


def test_choice_is_never_worse_than_contrastive_on_its_split_and_helps_when_the_head_knows_something():
    data, base = _pairs(80, 1)
    for noise, helps in ((50.0, False), (0.3, True)):
        found = candidates(NoisyOracle(data.caption_image, noise, seed=3), data, 16, base)
        choice = choose_both(found)
        r = reranked(found, choice)
        for d in ("i2t", "t2i"):
            before, after = float((getattr(base, d) <= 1).float().mean()), float((getattr(r, d) <= 1).float().mean())
            assert after >= before
            if helps:
                assert after >= before + 0.1 and choice[d].k >= 2
    # pure noise: the ITM logit alone over the top 16 is worse than contrastive, which is what choose keeps
    found = candidates(NoisyOracle(data.caption_image, 50.0, seed=3), data, 16, base)
    assert float((found["t2i"].ranks(16) <= 1).float().mean()) < float((base.t2i <= 1).float().mean())
    assert choose(found["t2i"], weights=(0.0,)) == NO_RERANK


def test_report_names_combined_itm_only_and_the_choice():
    data, base = _pairs(40, 2)
    found = candidates(NoisyOracle(data.caption_image, 0.5), data, 4, base)
    out = report(found, {"i2t": Choice(4, 2.0), "t2i": NO_RERANK})
    assert out["rerank_i2t_k"] == 4 and out["rerank_i2t_weight"] == 2.0 and out["rerank_t2i_k"] == 0
    assert out["reranked_t2i_r1"] == float((base.t2i <= 1).float().mean())
    assert {"itm_only_i2t_r1", "itm_only_t2i_r1", "reranked_rsum", "itm_only_rsum"} <= set(out)
    # what reranking did at rank 1: R@1 after = before + fixed - broke; nothing changes without reranking
    before = float((base.i2t <= 1).float().mean())
    assert abs(out["reranked_i2t_r1"] - (before + out["rerank_i2t_fixed"] - out["rerank_i2t_broke"])) < 1e-6
    assert out["rerank_i2t_fixed"] > 0 and out["rerank_t2i_fixed"] == out["rerank_t2i_broke"] == 0.0
    assert out["rerank_i2t_ceiling"] == float((base.i2t <= 4).float().mean()) >= out["reranked_i2t_r1"]


def test_in_batch_negatives_draw_similar_non_matches_only():
    owner = torch.tensor([0, 1, 2, 3])
    image = F.normalize(torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1]]), dim=-1)
    data = PairSet(
        ModalityFeatures(torch.zeros(4, 2)),
        ModalityFeatures(torch.zeros(4, 2)),
        owner,
        image,
        image.clone(),
        image_group=torch.tensor([0, 1, 2, 2]),
    )  # images 2 and 3 are the same scene
    g = torch.Generator().manual_seed(0)
    images, texts = in_batch_negatives(data, [0, 1, 2, 3], [0, 1, 2, 3], g, temperature=0.01)
    pairs = list(zip(images, texts))
    assert len(pairs) == 8
    for i, t in pairs:
        assert owner[t] != i and {i, int(owner[t])} != {2, 3}  # never a match, never a duplicate
    # at a low temperature the most similar non-match is drawn: images 0 and 1 are each other's
    assert (0, 1) in pairs and (1, 0) in pairs


def test_listwise_loss_is_a_softmax_over_each_querys_match_and_its_mined_negatives():
    import pytest

    data, _ = _pairs(12, 4)
    head = NoisyOracle(data.caption_image, 0.7, seed=1)
    neg_c, neg_i = hard_negatives(data.image_emb, data.caption_emb, data.caption_image, 4)
    images, captions = [0, 3, 5], [1, 9, 15]  # a caption of each image
    loss = listwise_loss(head, data, images, captions, neg_c, neg_i, 4, torch.Generator().manual_seed(0))
    by_hand = 0.0
    for i, c in zip(images, captions):  # every mined negative drawn: their order does not change the cross-entropy
        t = head.score(data, torch.tensor([i] * 5), torch.tensor([c, *neg_c[i].tolist()]))
        im = head.score(data, torch.tensor([i, *neg_i[c].tolist()]), torch.tensor([c] * 5))
        by_hand += float(-t.log_softmax(0)[0] - im.log_softmax(0)[0]) / 2
    assert float(loss) == pytest.approx(by_hand / 3, rel=1e-6)
    # fewer negatives, drawn from the same pool: an easier task, never a larger loss
    for seed in range(5):
        assert (
            float(listwise_loss(head, data, images, captions, neg_c, neg_i, 2, torch.Generator().manual_seed(seed)))
            <= float(loss) + 1e-6
        )
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"listwise \(5\) draws from each query's hard_pool mined negatives"):
        ITMOptions(hard_pool=4, listwise=5)

    from itm_core.config import FusionBenchmarkParams

    with pytest.raises(
        ValidationError,
        match=r"listwise \(17\) draws from each query's hard_pool mined negatives, so it can be at most hard_pool "
        r"\(16\)",
    ):
        FusionBenchmarkParams(listwise=17)
    assert FusionBenchmarkParams(listwise=16, hard_pool=16).listwise == 16


def test_itm_checkpoint_is_chosen_on_validation_reranking():
    def toy(n, seed):
        g = torch.Generator().manual_seed(seed)
        image = torch.randn(n, 6, generator=g)
        owner = torch.arange(n).repeat_interleave(2)
        text = image[owner][:, :4] + 0.05 * torch.randn(2 * n, 4, generator=g)
        # a weak contrastive matcher: its embeddings see only two of the four dimensions
        emb_i = F.normalize(image[:, :2] + 0.5 * torch.randn(n, 2, generator=g), dim=-1)
        emb_t = F.normalize(text[:, :2], dim=-1)
        return PairSet(ModalityFeatures(image), ModalityFeatures(text), owner, emb_i, emb_t)

    train, val = toy(128, 1), toy(48, 2)
    val_base = ranks(val.image_emb, val.caption_emb, val.caption_image, Dot)
    head = ITMHead(create("fusion", "concat-mlp", image_dim=6, text_dim=4, dim=16), prior_scale=0.0)
    training = HeadTraining(epochs=6, batch_size=16, lr=3e-3, patience=6, input_dropout=0.0)
    options = ITMOptions(hard_pool=4, itm_select="rerank", rerank_k=8)
    result = train_itm(head, train, val, training, options, val_base=val_base)
    best = result.history[result.best_epoch - 1]
    assert best["val_select"] == best["val_rerank_r1"] == max(h["val_rerank_r1"] for h in result.history)
    found = candidates(head, val, 8, val_base)
    from itm_core.models.rerank import rerank_r1

    assert abs(rerank_r1(found, choose_both(found)) - best["val_rerank_r1"]) < 1e-9
    base_r1 = float(((val_base.i2t <= 1).float().mean() + (val_base.t2i <= 1).float().mean()) / 2)
    assert best["val_rerank_r1"] > base_r1 + 0.1  # the head sees what the matcher misses
