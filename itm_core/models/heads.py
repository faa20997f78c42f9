"""Heads over a fusion plugin, and how they are trained and judged.

- The ITM head: a binary match classifier over the fused pair, trained with hard negatives mined
  from a contrastive matcher's similarities (the ALBEF/BLIP recipe); it reranks the contrastive
  top-k at evaluation.
- A task head: a classifier over the fused (image, question) pair, for visual question answering.
- The compositional probe: does the true caption outscore captions that swap colours, shapes or sides?
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from itm_core.data.pairs import captions_per_image
from itm_core.encode.features import ModalityFeatures
from itm_core.errors import ParamsError, PluginError
from itm_core.models.rerank import candidates, itm_only
from itm_core.models.retrieval import Ranks
from itm_core.models.standardize import Standardizer
from itm_core.models.token_reader import TokenReader, unpadded


def feature_rows(features: ModalityFeatures, tokens: bool) -> torch.Tensor:
    """Every pooled feature, or every unmasked token feature, as float32 rows."""
    if not tokens:
        return features.pooled.float()
    if features.tokens is None or features.mask is None:
        raise ValueError("token-level features were not encoded for this input")
    return features.tokens[features.mask].float()


class FusionHead(nn.Module):
    """A fusion plugin followed by an MLP with ``outputs`` logits (1 for ITM, the answer count for VQA).

    With a ``text_reader`` (a :class:`TokenReader`), a fusion of pooled features gets each text's
    pooled feature followed by its token features read into one vector (the fusion's ``text_dim`` is
    the pooled dimension plus the reader's output): the pooled feature blurs which word goes with
    which object, and the reader can keep it."""

    def __init__(
        self,
        fusion: Any,
        outputs: int,
        hidden: int = 256,
        dropout: float = 0.1,
        input_dropout: float = 0.0,
        text_reader: TokenReader | None = None,
    ) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        self.fusion = fusion.unwrapped if hasattr(fusion, "unwrapped") else fusion
        if not isinstance(self.fusion, nn.Module):
            raise PluginError(
                f"fusion {getattr(fusion, 'name', fusion)!r} is not a torch module, so it cannot be trained"
            )
        self._fuse = fusion.fuse  # through the contract checks
        self.factored = all(callable(getattr(self.fusion, m, None)) for m in ("embed_image", "embed_text", "combine"))
        self._combine: Any = getattr(fusion, "combine", None)  # through the contract checks
        self.tokens = getattr(fusion, "inputs", "pooled") == "tokens"
        if text_reader is not None and self.tokens:
            raise ParamsError(
                f"fusion {getattr(fusion, 'name', type(self.fusion).__name__)!r} reads token features itself; a text "
                "reader is for fusions of pooled features"
            )
        self.text_reader = text_reader
        self.image_norm = Standardizer(int(fusion.image_dim))
        self.text_norm = Standardizer(int(fusion.text_dim) - (text_reader.out_dim if text_reader is not None else 0))
        self.token_norm = Standardizer(text_reader.in_dim) if text_reader is not None else None
        self.outputs = outputs
        self.classifier = nn.Sequential(
            nn.Linear(int(fusion.dim), hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs)
        )

    def fit_statistics(self, image: ModalityFeatures, text: ModalityFeatures) -> None:
        self.image_norm.set_statistics(feature_rows(image, self.tokens))
        self.text_norm.set_statistics(feature_rows(text, self.tokens))
        if self.token_norm is not None:
            self.token_norm.set_statistics(feature_rows(text, True))

    def forward(self, image: ModalityFeatures, image_rows: Any, text: ModalityFeatures, text_rows: Any) -> torch.Tensor:
        """Logits of the aligned pairs ``(image_rows[n], text_rows[n])``. Each distinct text is read once;
        with a factored fusion each distinct image and text is standardised, dropped out and embedded
        once too, and only the pairs' part runs per pair."""
        image_rows = torch.as_tensor(image_rows, dtype=torch.long)
        text_rows = torch.as_tensor(text_rows, dtype=torch.long)
        if self.factored:
            return self.from_parts(self.parts(image, image_rows, text, text_rows))
        img, img_mask = image.rows(image_rows, self.tokens)
        txt, txt_mask = self._texts(text, text_rows)
        masks = {"image_mask": img_mask, "text_mask": txt_mask} if self.tokens else {}
        return self.classifier(self._fuse(self.input_dropout(self.image_norm(img)), txt, **masks))

    def parts(
        self, image: ModalityFeatures, image_rows: torch.Tensor, text: ModalityFeatures, text_rows: torch.Tensor
    ) -> PairParts:
        """A factored fusion's part of each distinct image and text of the pairs, and where each pair's are."""
        images, at_image = image_rows.unique(return_inverse=True)
        texts, at_text = text_rows.unique(return_inverse=True)
        img, img_mask = image.rows(images, self.tokens)
        txt, txt_mask = self._texts(text, texts)
        image_part = self.fusion.embed_image(self.input_dropout(self.image_norm(img)))
        return PairParts(image_part, at_image, img_mask, self.fusion.embed_text(txt), at_text, txt_mask)

    def from_parts(self, parts: PairParts, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the pairs at positions ``pairs`` (all when None) from their parts."""
        at_image = parts.at_image if pairs is None else parts.at_image[pairs]
        at_text = parts.at_text if pairs is None else parts.at_text[pairs]
        image_part, text_part = parts.image[at_image], parts.text[at_text]
        masks = {}
        if parts.image_mask is not None and parts.text_mask is not None:  # token-level parts
            text_part, text_mask = unpadded(text_part, parts.text_mask[at_text])
            masks = {"image_mask": parts.image_mask[at_image], "text_mask": text_mask}
        return self.classifier(self._combine(image_part, text_part, **masks))

    def _texts(self, text: ModalityFeatures, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The texts' standardised, dropped-out features (with the reader's vector) and their mask."""
        txt, mask = text.rows(rows, self.tokens)
        if mask is not None:
            txt, mask = unpadded(txt, mask)
        txt = self.input_dropout(self.text_norm(txt))
        if self.text_reader is not None and self.token_norm is not None:  # each distinct text is read once
            distinct, where = rows.unique(return_inverse=True)
            tokens, token_mask = text.rows(distinct, True)
            txt = torch.cat([txt, self.text_reader(self.token_norm(tokens), token_mask)[where]], dim=-1)
        return txt, mask

    @torch.no_grad()
    def attention_maps(
        self, image: ModalityFeatures, image_rows: Sequence[int], text: ModalityFeatures, text_rows: Sequence[int]
    ) -> torch.Tensor | None:
        """For fusions that attend from text to image patches (``attention_maps``, as ``cross-attention``
        has): how much each pair's text attends to each patch, ``(N, patches)``; None for other fusions."""
        if not hasattr(self.fusion, "attention_maps"):
            return None
        self.eval()
        img, img_mask = image.rows(torch.as_tensor(image_rows, dtype=torch.long), self.tokens)
        txt, txt_mask = text.rows(torch.as_tensor(text_rows, dtype=torch.long), self.tokens)
        return self.fusion.attention_maps(self.image_norm(img), self.text_norm(txt), img_mask, txt_mask)

    @torch.no_grad()
    def predict(
        self,
        image: ModalityFeatures,
        image_rows: Sequence[int] | torch.Tensor,
        text: ModalityFeatures,
        text_rows: Sequence[int] | torch.Tensor,
        batch: int = 1024,
    ) -> torch.Tensor:
        """Logits for the aligned pairs ``(image_rows[n], text_rows[n])``, in batches."""
        self.eval()
        i, t = torch.as_tensor(image_rows, dtype=torch.long), torch.as_tensor(text_rows, dtype=torch.long)
        return self.in_batches(image, i, text, t, batch, lambda logits, rows: logits, (self.outputs,))

    def in_batches(
        self,
        image: ModalityFeatures,
        image_rows: torch.Tensor,
        text: ModalityFeatures,
        text_rows: torch.Tensor,
        batch: int,
        then: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
    ) -> torch.Tensor:
        """``then(logits, positions)`` of the pairs in batches of ``batch``, in the pairs' order. A factored
        head embeds each distinct image and text of all the pairs once, before the batches. Token-level
        texts go in order of length, so that each batch pads only to its own longest text."""
        n = len(text_rows)
        if n == 0:
            return torch.zeros(0, *shape)
        order = (
            text.mask[text_rows].sum(1).argsort(stable=True)
            if self.tokens and text.mask is not None
            else torch.arange(n)
        )
        parts = self.parts(image, image_rows, text, text_rows) if self.factored else None

        def logits(rows: torch.Tensor) -> torch.Tensor:
            if parts is not None:
                return self.from_parts(parts, rows)
            return self(image, image_rows[rows], text, text_rows[rows])

        out = torch.cat([then(logits(rows), rows) for rows in order.split(batch)])
        return torch.empty_like(out).index_copy_(0, order, out)


@dataclass
class PairParts:
    """A factored head's parts of the distinct images and texts of some pairs (with their token masks)
    and, for each pair, which of them are its own."""

    image: torch.Tensor
    at_image: torch.Tensor
    image_mask: torch.Tensor | None
    text: torch.Tensor
    at_text: torch.Tensor
    text_mask: torch.Tensor | None


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --- hard negatives -----------------------------------------------------------------------------


def hard_negatives(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    caption_image: torch.Tensor,
    k: int,
    image_group: torch.Tensor | None = None,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar non-matching captions of each image ``(N_img, k)`` and images of each
    caption ``(N_txt, k)``.

    Images in the same ``image_group`` (duplicates: the same scene drawn twice) never count as
    negatives of each other, since no model could tell them apart.
    """
    owner = torch.as_tensor(caption_image, dtype=torch.long)
    group = torch.arange(len(image_emb)) if image_group is None else torch.as_tensor(image_group, dtype=torch.long)
    k_txt, k_img = min(k, len(text_emb) - 1), min(k, len(image_emb) - 1)
    captions, images = [], []
    for s in range(0, len(image_emb), chunk):
        sim = image_emb[s : s + chunk] @ text_emb.T
        sim[group[owner].unsqueeze(0) == group[s : s + len(sim)].unsqueeze(1)] = float("-inf")
        captions.append(sim.topk(k_txt, dim=1).indices)
    for s in range(0, len(text_emb), chunk):
        sim = text_emb[s : s + chunk] @ image_emb.T
        sim[group.unsqueeze(0) == group[owner[s : s + chunk]].unsqueeze(1)] = float("-inf")
        images.append(sim.topk(k_img, dim=1).indices)
    return torch.cat(captions), torch.cat(images)


# --- ITM ------------------------------------------------------------------------------------------


@dataclass
class PairSet:
    """One split for ITM: image and text features with the contrastive matcher's embeddings of both.

    The first ``len(caption_image)`` text rows are captions (``caption_image`` links them to images);
    rows after them are extra texts, e.g. the dataset's hard-negative captions, which ``negatives``
    ``(N_img, K)`` points at for each image, and ``canonical`` ``(N_img,)`` at the true caption written
    in the same template (so wording cannot give the negatives away). ``image_group`` marks duplicate
    images (equal ids).
    """

    image: ModalityFeatures
    text: ModalityFeatures
    caption_image: torch.Tensor
    image_emb: torch.Tensor
    text_emb: torch.Tensor
    negatives: torch.Tensor | None = None
    canonical: torch.Tensor | None = None
    image_group: torch.Tensor | None = None
    kinds: tuple[str, ...] = ()

    @property
    def caption_emb(self) -> torch.Tensor:
        return self.text_emb[: len(self.caption_image)]


class ITMHead(FusionHead):
    """The match classifier: the fused pair's logit plus a learned multiple of the pair's contrastive
    similarity, so the head corrects the matcher rather than starting from nothing."""

    def __init__(
        self,
        fusion: Any,
        hidden: int = 256,
        dropout: float = 0.1,
        input_dropout: float = 0.0,
        prior_scale: float = 5.0,
        text_reader: TokenReader | None = None,
    ) -> None:
        super().__init__(
            fusion, outputs=1, hidden=hidden, dropout=dropout, input_dropout=input_dropout, text_reader=text_reader
        )
        self.prior_scale = nn.Parameter(torch.tensor(float(prior_scale)))

    def score(self, data: PairSet, image_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        return self.with_prior(self(data.image, image_rows, data.text, text_rows), data, image_rows, text_rows)

    def with_prior(
        self, logits: torch.Tensor, data: PairSet, image_rows: torch.Tensor, text_rows: torch.Tensor
    ) -> torch.Tensor:
        """The fused pairs' ``logits`` plus the learned multiple of their contrastive similarity."""
        prior = (data.image_emb[image_rows] * data.text_emb[text_rows]).sum(-1)
        return logits[:, 0] + self.prior_scale * prior

    @torch.no_grad()
    def predict_pairs(
        self,
        data: PairSet,
        image_rows: Sequence[int] | torch.Tensor,
        text_rows: Sequence[int] | torch.Tensor,
        batch: int = 1024,
    ) -> torch.Tensor:
        """Match logits of the aligned pairs ``(image_rows[n], text_rows[n])``, in batches."""
        self.eval()
        i, t = torch.as_tensor(image_rows, dtype=torch.long), torch.as_tensor(text_rows, dtype=torch.long)
        return self.in_batches(
            data.image, i, data.text, t, batch, lambda logits, rows: self.with_prior(logits, data, i[rows], t[rows]), ()
        )


def itm_pairs(data: PairSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A balanced evaluation set: each image with its first caption (match) and its hardest non-matching caption."""
    first = captions_per_image(data.caption_image, len(data.image))
    images = [i for i, caps in enumerate(first) if caps]
    hardest, _ = hard_negatives(data.image_emb, data.caption_emb, data.caption_image, 1, data.image_group)
    image_rows = torch.tensor(images + images)
    text_rows = torch.tensor([first[i][0] for i in images] + [int(hardest[i, 0]) for i in images])
    labels = torch.cat([torch.ones(len(images)), torch.zeros(len(images))])
    return image_rows, text_rows, labels


def evaluate_itm(head: ITMHead, data: PairSet) -> dict[str, float]:
    """``itm_accuracy`` (threshold 0.5) and ``itm_auc`` on matches against hard non-matches."""
    from sklearn.metrics import roc_auc_score

    image_rows, text_rows, labels = itm_pairs(data)
    logits = head.predict_pairs(data, image_rows, text_rows)
    return {
        "itm_accuracy": float(((logits > 0).float() == labels).float().mean()),
        "itm_auc": float(roc_auc_score(labels.numpy(), logits.numpy())),
    }


def rerank(head: ITMHead, data: PairSet, k: int, base: Ranks) -> Ranks:
    """Ranks after the ITM logit alone reorders each query's contrastive top ``k``; deeper ranks are unchanged."""
    return itm_only(candidates(head, data, k, base))


# --- the compositional probe ------------------------------------------------------------------------


def probe_pair_scores(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], probe: PairSet) -> dict[str, float]:
    """The probe over a probe set: text rows ``0..N-1`` are each image's true caption, then one block
    of ``N`` rows per negative kind, named by ``probe.kinds``."""
    n = len(probe.image)
    rows = torch.arange(n)
    return probe_accuracy(score(rows, rows), {k: score(rows, rows + (b + 1) * n) for b, k in enumerate(probe.kinds)})


def probe_accuracy(true_scores: torch.Tensor, negative_scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """How often the true caption outscores each kind of hard negative (ties count as failures):
    ``probe_accuracy_<kind>`` per kind and ``probe_accuracy``, their mean."""
    out = {
        f"probe_accuracy_{kind.removeprefix('neg_')}": float((true_scores > s).float().mean())
        for kind, s in negative_scores.items()
    }
    out["probe_accuracy"] = float(np.mean(list(out.values())))
    return out


# --- VQA --------------------------------------------------------------------------------------------


@dataclass
class QASet:
    """Questions about images: question features, the image each asks about, answer ids, question types."""

    image: ModalityFeatures
    question: ModalityFeatures
    question_image: torch.Tensor
    answer: torch.Tensor
    kind: list[str]


def evaluate_vqa(head: FusionHead, data: QASet) -> dict[str, float]:
    """``vqa_accuracy`` overall and ``vqa_accuracy_<type>`` per question type."""
    predicted = head.predict(data.image, data.question_image, data.question, torch.arange(len(data.answer))).argmax(1)
    correct = (predicted == data.answer).float()
    out = {"vqa_accuracy": float(correct.mean())}
    for kind in sorted(set(data.kind)):
        rows = torch.tensor([k == kind for k in data.kind])
        out[f"vqa_accuracy_{kind}"] = float(correct[rows].mean())
    return out
