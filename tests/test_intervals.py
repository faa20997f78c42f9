"""Bootstrap intervals over test units, the paired difference that decides a promotion, and the
decision itself under each policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itm_core.contract.evidence import UnitScores, mean_scores
from itm_core.judge.intervals import intervals, paired_difference, recall_intervals, retrieval_scores
from itm_core.models.retrieval import Ranks, ranks, recall_metrics
from itm_core.ops.promotion import PromotionOptions, decide


class Dot:
    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b.T


def ranked(n: int, noise: float, seed: int = 0) -> tuple[Ranks, torch.Tensor]:
    """Ranks of a matcher whose captions are their image's embedding plus ``noise``: three captions each."""
    g = torch.Generator().manual_seed(seed)
    owners = torch.arange(n).repeat_interleave(3)
    images = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    texts = torch.nn.functional.normalize(images[owners] + noise * torch.randn(len(owners), 16, generator=g), dim=1)
    return ranks(images, texts, owners, Dot()), owners


def test_intervals_surround_the_figures_recall_metrics_reports_and_narrow_with_more_images():
    r, owners = ranked(60, 1.0)
    found = recall_intervals(r, owners)
    reported = recall_metrics(r)
    for metric, iv in found.items():
        assert iv.value == pytest.approx(reported[metric], rel=1e-6)
        assert iv.low <= iv.value <= iv.high and iv.n == 60
    assert found["rsum"].high - found["rsum"].low > 0
    big, big_owners = ranked(600, 1.0)
    wide, narrow = found["t2i_r1"], recall_intervals(big, big_owners)["t2i_r1"]
    assert narrow.high - narrow.low < (wide.high - wide.low) / 2


def test_a_95_percent_interval_covers_the_true_rate_about_95_times_in_100():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        hits = rng.random(120) < 0.3
        iv = intervals(mean_scores({"rate": hits}), ["rate"], resamples=500, seed=trial)["rate"]
        covered += iv.low <= 0.3 <= iv.high
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_difference_is_zero_for_the_same_model_and_sure_of_a_clearly_better_one():
    weak, owners = ranked(200, 1.6)
    strong, _ = ranked(200, 0.6)
    same = paired_difference(retrieval_scores(weak, owners), retrieval_scores(weak, owners), "rsum")
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    better = paired_difference(retrieval_scores(strong, owners), retrieval_scores(weak, owners), "rsum")
    assert better.low > 0 and better.value == pytest.approx(
        recall_metrics(strong)["rsum"] - recall_metrics(weak)["rsum"]
    )
    with pytest.raises(ValueError, match="same test images"):
        paired_difference(retrieval_scores(strong, owners), mean_scores({"rsum": [1.0]}), "rsum")


def test_pairing_sees_a_small_consistent_gain_that_unpaired_intervals_overlap():
    rng = np.random.default_rng(0)
    hard = rng.random(300)  # how hard each test unit is, shared by both models
    old = (hard < 0.5).astype(float)
    new = old.copy()
    new[np.flatnonzero(old == 0)[:25]] = 1  # the new model also gets 25 of the old one's misses
    a, b = mean_scores({"acc": new}), mean_scores({"acc": old})
    apart, together = intervals(a, ["acc"])["acc"], intervals(b, ["acc"])["acc"]
    assert apart.low < together.high  # unpaired, the intervals overlap
    assert paired_difference(a, b, "acc").low > 0  # paired, the gain is sure


def scores_of(values: list[float]) -> UnitScores:
    return mean_scores({"bleu4": values})


@pytest.mark.parametrize(
    ("policy", "n", "gain", "promoted", "says"),
    [
        ("evidence", 2, 1.0, False, "too few to replace a champion (promotion.min_test_images is 50)"),
        ("evidence", 200, 0.3, True, "better at 95% confidence"),
        ("evidence", 200, 0.0, False, "not enough evidence at 95% confidence"),
        ("better", 2, 0.5, True, "policy better: higher"),
        ("better", 200, 0.0, False, "policy better: not higher"),
        ("never", 200, 0.3, False, "policy never"),
        ("always", 2, -0.5, True, "policy always"),
        ("evidence", 200, -0.5, False, "worse at 95% confidence"),
    ],
)
def test_decide_follows_the_policy_and_says_why_with_the_interval_and_n(policy, n, gain, promoted, says):
    rng = np.random.default_rng(n)
    old = rng.random(n)
    new = old + gain * (rng.random(n) < 0.5) if gain >= 0 else old + gain
    if gain == 0:  # the same scores (for evidence: on other units, so no sure difference either way)
        new = rng.permutation(old) if policy == "evidence" else old.copy()
    decision = decide(PromotionOptions(policy=policy), "bleu4", scores_of(list(new)), "3", scores_of(list(old)), "1")
    assert decision.promoted is promoted, decision.reason()
    assert decision.reason().startswith("promoted v3 over champion v1" if promoted else "kept champion v1 over v3")
    assert says in decision.reason() and f"on {n} test images" in decision.reason()
    assert decision.difference is not None and decision.tags()["promotion.n"] == str(n)
    assert decision.tags()["promotion.interval"] == decision.difference.signed(3)


def test_the_first_version_becomes_champion_even_on_two_test_images():
    decision = decide(PromotionOptions(), "bleu4", scores_of([0.1, 0.2]), "1")
    assert decision.promoted and decision.reason().startswith("promoted v1: first model")


def test_a_champion_trained_on_other_data_is_kept_unless_the_option_allows_comparing():
    new, old = scores_of([1.0] * 100), scores_of([0.0] * 100)
    other = "the champion's dataset 'shapes' (pairs a), this version's 'manifest' (pairs b)"
    kept = decide(PromotionOptions(), "bleu4", new, "2", old, "1", other)
    assert not kept.promoted and "not promoted across datasets" in kept.reason() and "registered_model" in kept.reason()
    assert "'manifest'" in kept.reason() and "+1.000 [+1.000, +1.000] on 100 test images" in kept.reason()
    allowed = decide(PromotionOptions(across_datasets=True), "bleu4", new, "2", old, "1", other)
    assert allowed.promoted and "trained on other data" in allowed.reason()


def test_promotion_options_refuse_what_they_cannot_mean():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="policy"):
        PromotionOptions(policy="sometimes")
    with pytest.raises(ValidationError, match="confidence"):
        PromotionOptions(confidence=1.5)
