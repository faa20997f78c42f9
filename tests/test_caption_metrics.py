"""Caption metrics (COCO caption evaluation definitions) against hand-computed cases."""

from __future__ import annotations

import pytest

from itm_core import create
from itm_core.testing import assert_conforms
from plugins.caption_metrics import tokenize


def test_tokenize_like_the_coco_ptb_step():
    assert tokenize("A Red circle, on the LEFT!") == "a red circle on the left"
    assert tokenize("  two   squares... ") == "two squares"


def test_bleu_by_hand():
    perfect = create("metric", "bleu").compute(["a b c d"], [["a b c d"]])
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in perfect.values())
    # "the cat the cat" vs "the cat sat": clipped unigram precision 2/4, no brevity penalty
    clipped = create("metric", "bleu").compute(["the cat the cat"], [["the cat sat"]])
    assert clipped["bleu1"] == pytest.approx(0.5, abs=1e-6)
    # bigrams: "the cat" x2 (clipped to 1), "cat the" (0) -> 1/3; BLEU-2 = sqrt(1/2 * 1/3)
    assert clipped["bleu2"] == pytest.approx((0.5 * (1 / 3)) ** 0.5, abs=1e-6)


def test_rouge_l_by_hand():
    # LCS("a b c", "a c d") = 2: P = R = 2/3, so F = 2/3 for any beta
    assert create("metric", "rouge_l").compute(["a b c"], [["a c d"]])["rouge_l"] == pytest.approx(2 / 3)
    # the best reference counts
    assert create("metric", "rouge_l").compute(["a b c"], [["x y z", "a b c"]])["rouge_l"] == pytest.approx(1.0)


def test_cider_prefers_the_right_caption_and_ignores_case():
    refs = [
        ["a red circle on the left", "a red disc at the left side"],
        ["two blue squares", "a pair of blue squares"],
        ["a green star", "one green star"],
    ]
    right = create("metric", "cider").compute(["A red circle on the LEFT.", "two blue squares", "a green star"], refs)[
        "cider"
    ]
    wrong = create("metric", "cider").compute(["two blue squares", "a green star", "a red circle on the left"], refs)[
        "cider"
    ]
    assert right > 1.0 > wrong


def test_caption_metrics_reject_misaligned_inputs():
    with pytest.raises(ValueError, match="bleu: 2 predictions for 1 reference lists"):
        create("metric", "bleu").compute(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        create("metric", "cider").compute(["a"], [[]])


@pytest.mark.parametrize("name", ["bleu", "rouge_l", "cider"])
def test_caption_metrics_conform(name):
    assert_conforms("metric", name)
