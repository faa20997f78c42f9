"""Retrieval metrics against hand-computed cases and a brute-force reference."""

from __future__ import annotations

import pytest
import torch

from itm_core import create
from itm_core.models.retrieval import ranks, recall_metrics, top_k


class MatrixSimilarity:
    """Scores given by a fixed matrix: embeddings are one-hot row/column selectors."""

    def __init__(self, matrix):
        self.m = torch.tensor(matrix, dtype=torch.float32)

    def score(self, a, b):
        return a @ self.m @ b.T

    def pairwise(self, a, b):
        return ((a @ self.m) * b).sum(-1)


def _onehots(n_img, n_txt):
    return torch.eye(n_img), torch.eye(n_txt)


def test_hand_computed_case():
    # two images; captions 0 and 1 describe image 0, caption 2 describes image 1
    sim = MatrixSimilarity([[0.9, 0.1, 0.5], [0.8, 0.3, 0.7]])
    img, txt = _onehots(2, 3)
    r = ranks(img, txt, [0, 0, 1], sim)
    assert r.i2t.tolist() == [1, 2]  # image 1: caption 0 (0.8) outranks its own caption (0.7)
    assert r.t2i.tolist() == [1, 2, 1]  # caption 1: image 1 (0.3) outranks image 0 (0.1)
    m = recall_metrics(r)
    assert m["i2t_r1"] == 0.5 and m["i2t_r5"] == 1.0
    assert m["t2i_r1"] == pytest.approx(2 / 3) and m["t2i_r10"] == 1.0
    assert m["i2t_medr"] == 1.0 and m["i2t_meanr"] == 1.5 and m["t2i_meanr"] == pytest.approx(4 / 3)
    assert m["rsum"] == pytest.approx(100 * (0.5 + 1 + 1 + 2 / 3 + 1 + 1))


def test_any_ground_truth_caption_counts_for_image_to_text():
    # image 0's best caption (index 1) is top; its other caption is last: still a hit at 1
    sim = MatrixSimilarity([[0.0, 0.9, 0.5]])
    img, txt = _onehots(1, 3)
    r = ranks(img, txt, [0, 0, 0], sim)
    assert r.i2t.tolist() == [1]


def test_ties_count_against_the_model():
    sim = MatrixSimilarity([[1.0] * 4] * 4)
    img, txt = _onehots(4, 4)
    m = recall_metrics(ranks(img, txt, [0, 1, 2, 3], sim))
    assert m["i2t_r1"] == 0.0 and m["t2i_r1"] == 0.0 and m["i2t_medr"] == 4.0


def brute_force(image, text, owner):
    s = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    i2t, t2i = [], []
    for i in range(len(image)):
        pos = s[i, owner == i].max()
        i2t.append(1 + int(((s[i] >= pos) & (owner != i)).sum()))
    for j in range(len(text)):
        pos = s[owner[j], j]
        t2i.append(1 + int(((s[:, j] >= pos) & (torch.arange(len(image)) != owner[j])).sum()))
    return i2t, t2i


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_chunked_ranks_match_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(23, 8, generator=g), torch.randn(60, 8, generator=g)
    owner = torch.randint(0, 23, (60,), generator=g)
    owner[:23] = torch.arange(23)  # every image has a caption
    r = ranks(image, text, owner, create("similarity", "cosine"), chunk=chunk)
    i2t, t2i = brute_force(image, text, owner)
    assert r.i2t.tolist() == i2t and r.t2i.tolist() == t2i


def test_retrieval_metric_plugin_perfect_and_keys():
    emb = torch.eye(5)
    m = create("metric", "retrieval").compute(emb, emb.repeat_interleave(2, 0), [i // 2 for i in range(10)])
    assert m["i2t_r1"] == m["t2i_r1"] == 1.0 and m["rsum"] == 600.0
    assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_medr", "t2i_medr", "rsum"} <= set(m)


def test_ranks_validates_links():
    with pytest.raises(ValueError, match="caption_image has 2 entries for 3 captions"):
        ranks(torch.eye(2), torch.eye(3), [0, 1], create("similarity", "dot"))
    with pytest.raises(ValueError, match="outside"):
        ranks(torch.eye(2), torch.eye(3), [0, 1, 5], create("similarity", "dot"))


def test_top_k_matches_full_sort():
    g = torch.Generator().manual_seed(1)
    q, gallery = torch.randn(4, 6, generator=g), torch.randn(50, 6, generator=g)
    sim = create("similarity", "dot")
    scores, idx = top_k(q, gallery, sim, k=5, chunk=8)
    full = sim.score(q, gallery)
    ref_s, ref_i = full.topk(5, dim=1)
    assert torch.equal(idx, ref_i) and torch.allclose(scores, ref_s)


def test_similarities():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    cos = create("similarity", "cosine").score(a, b)
    assert torch.allclose(cos, torch.tensor([[1.0, 2**-0.5, 0.0], [0.0, 2**-0.5, -1.0]]))
    dot = create("similarity", "dot", scale=2.0)
    assert torch.allclose(dot.score(a, b), 2 * a @ b.T)
    assert torch.allclose(dot.pairwise(a, b[:2]), torch.tensor([4.0, 4.0]))


@pytest.mark.slow
def test_chunked_ranks_equal_the_full_matrix_ranks():
    """Positives are scored by the same chunk computations as negatives: no near-tie flips (a separate
    pairwise pass used to put 8 of 30,000 ranks off by one here)."""
    from itm_core import create
    from itm_core.models.retrieval import ranks

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5000, 256), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(25000, 256), dim=1)
    owner = torch.arange(5000).repeat_interleave(5)[torch.randperm(25000)]
    s = img @ txt.T
    positive = s[owner, torch.arange(len(txt))]
    negative = owner.unsqueeze(0) != torch.arange(len(img)).unsqueeze(1)
    best = torch.full((len(img),), float("-inf")).scatter_reduce(0, owner, positive, reduce="amax")
    r = ranks(img, txt, owner, create("similarity", "dot"))
    assert torch.equal(r.i2t, ((s >= best.unsqueeze(1)) & negative).sum(1) + 1)
    assert torch.equal(r.t2i, ((s >= positive.unsqueeze(0)) & negative).sum(0) + 1)
