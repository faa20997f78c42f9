"""Caption metrics with the COCO caption evaluation's own scorers (pycocoevalcap): ``bleu``
(BLEU-1..4), ``rouge_l`` and ``cider`` (CIDEr-D as COCO reports it).

The COCO toolkit tokenises with the Java PTB tokenizer; here the text is lower-cased and split the
same way in pure Python (punctuation the PTB step removes is dropped), so no Java is needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from itm_core import hookimpl
from itm_core.components import Metric
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
    """Checks the inputs, tokenises them and hands them to one pycocoevalcap scorer (``score``)."""

    task = "captioning"
    label: str
    keys: tuple[str, ...]

    def score(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, float]:
        raise NotImplementedError

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]], **_: Any) -> dict[str, float]:
        if not predictions:
            return {k: 0.0 for k in self.keys}
        return self.score(*_inputs(self.label, predictions, references))


class Bleu(_CocoMetric):
    """Corpus BLEU-1..4 (``bleu1`` .. ``bleu4``) against several references, as in the COCO evaluation."""

    label, keys = "bleu", ("bleu1", "bleu2", "bleu3", "bleu4")

    def score(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, float]:
        from pycocoevalcap.bleu.bleu import Bleu as CocoBleu

        scores, _ = CocoBleu(4).compute_score(gts, res, verbose=0)
        return {k: float(v) for k, v in zip(self.keys, scores)}


class RougeL(_CocoMetric):
    """ROUGE-L (longest common subsequence F-measure, beta 1.2, best reference), averaged over images."""

    label, keys = "rouge_l", ("rouge_l",)

    def score(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, float]:
        from pycocoevalcap.rouge.rouge import Rouge

        return {"rouge_l": float(Rouge().compute_score(gts, res)[0])}


class Cider(_CocoMetric):
    """CIDEr-D over the evaluated set (its document frequencies come from these references, as in COCO)."""

    label, keys = "cider", ("cider",)

    def score(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[str, float]:
        from pycocoevalcap.cider.cider import Cider as CocoCider

        return {"cider": float(CocoCider().compute_score(gts, res)[0])}


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
