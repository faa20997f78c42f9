"""Caption metrics with the COCO caption evaluation's own scorers (pycocoevalcap): ``bleu``
(BLEU-1..4), ``rouge_l`` and ``cider`` (CIDEr-D as COCO reports it).

The COCO toolkit tokenises with the Java PTB tokenizer; here the text is lower-cased and split the
same way in pure Python (punctuation the PTB step removes is dropped), so no Java is needed.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from itm_core import hookimpl
from itm_core.components import Metric

# the punctuation tokens pycocoevalcap's PTBTokenizer removes
_PUNCTUATION = re.compile(r"""[''`"\-\.\?!,:;/\\()\[\]{}@#$%^&*+=|<>~_]+""")
REQUIRES = ["pycocoevalcap"]


def tokenize(text: str) -> str:
    """Lower-case, punctuation out, single spaces: what the COCO scorers expect to receive."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _inputs(name: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions for {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError(f"{name}: every prediction needs at least one reference caption")
    gts = {i: [tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [tokenize(p) or "<empty>"] for i, p in enumerate(predictions)}
    return gts, res


class Bleu(Metric):
    """Corpus BLEU-1..4 (``bleu1`` .. ``bleu4``) against several references, as in the COCO evaluation."""

    task = "captioning"

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]], **_: Any) -> dict[str, float]:
        from pycocoevalcap.bleu.bleu import Bleu as CocoBleu

        if not predictions:
            return {f"bleu{n}": 0.0 for n in range(1, 5)}
        scores, _ = CocoBleu(4).compute_score(*_inputs("bleu", predictions, references), verbose=0)
        return {f"bleu{n + 1}": float(s) for n, s in enumerate(scores)}


class RougeL(Metric):
    """ROUGE-L (longest common subsequence F-measure, beta 1.2, best reference), averaged over images."""

    task = "captioning"

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]], **_: Any) -> dict[str, float]:
        from pycocoevalcap.rouge.rouge import Rouge

        if not predictions:
            return {"rouge_l": 0.0}
        score, _ = Rouge().compute_score(*_inputs("rouge_l", predictions, references))
        return {"rouge_l": float(score)}


class Cider(Metric):
    """CIDEr-D over the evaluated set (its document frequencies come from these references, as in COCO)."""

    task = "captioning"

    def compute(self, predictions: Sequence[str], references: Sequence[Sequence[str]], **_: Any) -> dict[str, float]:
        from pycocoevalcap.cider.cider import Cider as CocoCider

        if not predictions:
            return {"cider": 0.0}
        score, _ = CocoCider().compute_score(*_inputs("cider", predictions, references))
        return {"cider": float(score)}


@hookimpl
def register_metrics(register):
    register("bleu", Bleu, task="captioning", keys=["bleu1", "bleu2", "bleu3", "bleu4"], requires=REQUIRES,
             description="BLEU-1..4 as the COCO caption evaluation computes them")
    register("rouge_l", RougeL, task="captioning", keys=["rouge_l"], requires=REQUIRES, description="ROUGE-L (COCO caption evaluation)")
    register("cider", Cider, task="captioning", keys=["cider"], requires=REQUIRES, description="CIDEr-D (COCO caption evaluation)")
