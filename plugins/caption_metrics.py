"""Caption metrics with the COCO caption evaluation's own scorers (pycocoevalcap): ``bleu``
(BLEU-1..4), ``rouge_l`` and ``cider`` (CIDEr-D as COCO reports it).

The COCO toolkit tokenises with the Java PTB tokenizer; here the text is lower-cased and split the
same way in pure Python (punctuation the PTB step removes is dropped), so no Java is needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from itm_core import hookimpl
from itm_core.components import Metric
from itm_core.contract.evidence import UnitScores, mean_scores
from itm_core.errors import DataError

# the punctuation tokens pycocoevalcap's PTBTokenizer removes
_PUNCTUATION = re.compile(r"""[''`"\-\.\?!,:;/\\()\[\]{}@#$%^&*+=|<>~_]+""")
REQUIRES = ["pycocoevalcap"]


def tokenize(text: str) -> str:
    """Lower-case, punctuation out, single spaces: what the COCO scorers expect to receive."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _inputs(
    name: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    if len(predictions) != len(references):
        raise DataError(f"{name}: {len(predictions)} predictions for {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise DataError(f"{name}: every prediction needs at least one reference caption")
    gts = {i: [tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [tokenize(p) or "<empty>"] for i, p in enumerate(predictions)}
    return gts, res


class _CocoMetric(Metric):
    """Checks the inputs, tokenises them and hands them to one pycocoevalcap scorer (``per_image``):
    the metric's value is computed from the per-image columns it returns, so ``compute`` and ``units``
    agree by construction."""

    task = "captioning"
    label: str
    keys: tuple[str, ...]

    def per_image(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> UnitScores:
        raise NotImplementedError

    def units(self, predictions: Sequence[str], references: Sequence[Sequence[str]], **_: Any) -> UnitScores:
        if not predictions:
            return mean_scores({k: [] for k in self.keys})
        return self.per_image(*_inputs(self.label, predictions, references))

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]], **_: Any) -> dict[str, float]:
        if not predictions:
            return {k: 0.0 for k in self.keys}
        scores = self.units(predictions, references)
        return {k: scores.value(k) for k in self.keys}


@dataclass(frozen=True)
class BleuFigures:
    """Corpus BLEU-1..4 from summed per-image columns: reference length, hypothesis length, then the
    clipped n-gram matches and the n-gram counts for n = 1..4; the COCO scorer's own formula (its
    smoothing constants and brevity penalty against the closest reference length)."""

    def __call__(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        tiny, small = 1e-15, 1e-9
        reflen, testlen = sums[..., 0], sums[..., 1]
        ratio = (testlen + tiny) / (reflen + small)
        brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
        out, product = {}, np.ones_like(reflen)
        for k in range(4):
            product = product * (sums[..., 2 + k] + tiny) / (sums[..., 6 + k] + small)
            out[f"bleu{k + 1}"] = product ** (1.0 / (k + 1)) * brevity
        return out


class Bleu(_CocoMetric):
    """Corpus BLEU-1..4 (``bleu1`` .. ``bleu4``) against several references, as in the COCO evaluation."""

    label, keys = "bleu", ("bleu1", "bleu2", "bleu3", "bleu4")

    def per_image(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> UnitScores:
        from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

        rows = []
        for i, refs in gts.items():
            cooked = cook_test(res[i][0], cook_refs(refs), eff="closest")
            rows.append([cooked["reflen"], cooked["testlen"], *cooked["correct"], *cooked["guess"]])
        return UnitScores(np.asarray(rows, dtype=np.float64), BleuFigures())


class RougeL(_CocoMetric):
    """ROUGE-L (longest common subsequence F-measure, beta 1.2, best reference), averaged over images."""

    label, keys = "rouge_l", ("rouge_l",)

    def per_image(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> UnitScores:
        from pycocoevalcap.rouge.rouge import Rouge

        return mean_scores({"rouge_l": Rouge().compute_score(gts, res)[1]})


class Cider(_CocoMetric):
    """CIDEr-D over the evaluated set (its document frequencies come from these references, as in COCO)."""

    label, keys = "cider", ("cider",)

    def per_image(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> UnitScores:
        from pycocoevalcap.cider.cider import Cider as CocoCider

        return mean_scores({"cider": CocoCider().compute_score(gts, res)[1]})


@hookimpl
def register_metrics(register):
    for metric in (Bleu, RougeL, Cider):
        register(
            metric.label,
            metric,
            task="captioning",
            keys=list(metric.keys),
            requires=REQUIRES,
            description=(metric.__doc__ or metric.__name__).splitlines()[0],
        )
