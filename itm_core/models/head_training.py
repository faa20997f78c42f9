"""How the ITM and VQA heads learn (through :func:`itm_core.models.loop.fit`): their options, the
negatives the ITM head sees, and the validation score that picks each head's best epoch."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from itm_core.contract.params import Params
from itm_core.data.pairs import captions_per_image
from itm_core.models.heads import (
    FusionHead,
    ITMHead,
    PairSet,
    QASet,
    evaluate_itm,
    evaluate_vqa,
    hard_negatives,
    probe_pair_scores,
)
from itm_core.models.loop import FitResult, Trainer, adamw, fit, seed_everything
from itm_core.models.rerank import DIRECTIONS, candidates, choose_both, rerank_r1
from itm_core.models.retrieval import Ranks

OnEpoch = Callable[[int, dict[str, float]], None]


class HeadTraining(Params):
    """How one head is trained: AdamW at a fixed rate, early stopping on its validation score."""

    epochs: int = Field(20, ge=1, description="Maximum epochs (one pass over the training images)")
    batch_size: int = Field(64, ge=2, description="Images per batch")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(5, ge=1, description="Stop after this many epochs without validation improvement")
    min_delta: float = Field(
        0.01,
        ge=0,
        description="An epoch counts as an improvement for patience only when it beats the last one that did by "
        "more than this (the best epoch is kept all the same)",
    )
    input_dropout: float = Field(0.3, ge=0, lt=1, description="Dropout on the standardised input features")


class ITMOptions(Params):
    """What the ITM head is trained on and judged by, beyond its optimisation."""

    hard_pool: int = Field(
        16, ge=1, description="Hard negatives are sampled from each item's this many most similar non-matches"
    )
    in_batch_negatives: bool = Field(
        True,
        description="Also train ITM heads on a negative caption and image per pair drawn from the batch by "
        "contrastive similarity (ALBEF)",
    )
    listwise: int = Field(
        0,
        ge=0,
        description="Also train ITM heads on the reranking task itself: a softmax over each query's match and "
        "this many of its hard_pool mined negatives, in both directions (0: off; at most hard_pool)",
    )
    rerank_k: int = Field(
        16,
        ge=1,
        description="The ITM head reranks at most the contrastive top k (k and the contrastive weight are "
        "chosen on validation)",
    )
    itm_select: Literal["rerank+probe", "rerank", "probe", "auc"] = Field(
        "rerank+probe",
        description="Validation score that picks each ITM head's best epoch: reranked R@1 (mean of both "
        "directions), probe accuracy, their sum, or ITM AUC",
    )
    text_reader: Literal["auto", "shared", "tokens", "pooled"] = Field(
        "auto",
        description="What fusions of pooled features (all but cross-attention) get of each text beside its pooled "
        "feature: `shared`: its token features read into one vector by a small transformer with attention "
        "pooling, trained once with one ITM head before the fusions and then frozen, so that every fusion "
        "reads the texts alike (which word goes with which object survives); `tokens`: a reader trained with "
        "each head (slower: every head reads every distinct text of each batch); `pooled`: the pooled "
        "feature alone; `auto`: shared when the text encoder gives token features, else pooled",
    )

    @model_validator(mode="after")
    def _listwise_within_the_pool(self) -> ITMOptions:
        if self.listwise > self.hard_pool:
            raise ValueError(
                f"listwise ({self.listwise}) draws from each query's hard_pool mined negatives, "
                f"so it can be at most hard_pool ({self.hard_pool})"
            )
        return self


def in_batch_negatives(
    train: PairSet, images: list[int], captions: list[int], generator: torch.Generator, temperature: float = 0.07
) -> tuple[list[int], list[int]]:
    """ALBEF's in-batch hard negatives: for each image a caption of another image in the batch, drawn
    with probability ``softmax(similarity / temperature)``; for each caption, an image likewise.
    Duplicates of the image (same ``image_group``) are never drawn; a row with nothing to draw is left out.
    Returns the (image, caption) rows of the negative pairs."""
    i, c = torch.tensor(images), torch.tensor(captions)
    group = torch.arange(len(train.image)) if train.image_group is None else train.image_group
    same = group[i].unsqueeze(1) == group[train.caption_image[c]].unsqueeze(0)  # (B images, B captions)
    sim = (train.image_emb[i] @ train.text_emb[c].T).float() / temperature
    sim = sim.masked_fill(same, float("-inf"))
    out_i: list[int] = []
    out_t: list[int] = []
    rows = (~same).any(1)
    if rows.any():
        drawn = torch.multinomial(sim[rows].softmax(1), 1, generator=generator)[:, 0]
        out_i += i[rows].tolist()
        out_t += c[drawn].tolist()
    cols = (~same).any(0)
    if cols.any():
        drawn = torch.multinomial(sim.T[cols].softmax(1), 1, generator=generator)[:, 0]
        out_i += i[drawn].tolist()
        out_t += c[cols].tolist()
    return out_i, out_t


def listwise_loss(
    head: ITMHead,
    train: PairSet,
    images: list[int],
    captions: list[int],
    neg_captions: torch.Tensor,
    neg_images: torch.Tensor,
    n: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The reranking task itself: each image's caption against ``n`` of its mined negative captions,
    and each caption's image against ``n`` of its mined negative images, a cross-entropy over each
    query's ``1 + n`` logits with the match first (both directions averaged)."""
    i, c = torch.tensor(images), torch.tensor(captions)

    def pick(pool: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return pool[rows].gather(1, torch.rand(len(rows), pool.shape[1], generator=generator).argsort(1)[:, :n])

    texts = torch.cat([c.unsqueeze(1), pick(neg_captions, i)], 1)  # (B, 1+n) per image
    imgs = torch.cat([i.unsqueeze(1), pick(neg_images, c)], 1)  # (B, 1+n) per caption
    b, m = texts.shape
    logit_t = head.score(train, i.repeat_interleave(m), texts.flatten()).view(b, m)
    logit_i = head.score(train, imgs.flatten(), c.repeat_interleave(m)).view(b, m)
    zero = torch.zeros(b, dtype=torch.long)
    return (F.cross_entropy(logit_t, zero) + F.cross_entropy(logit_i, zero)) / 2


class HeadTrainer(Trainer):
    """A head learning from the losses its ``losses(rng)`` yields, batch by batch, with AdamW."""

    def __init__(self, head: FusionHead, training: HeadTraining, seed: int) -> None:
        self.head = head
        self.optimizer = adamw(head.parameters(), lr=training.lr, weight_decay=training.weight_decay)
        self.rng = random.Random(seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head}

    def losses(self, rng: random.Random) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def batches(self) -> Iterator[torch.Tensor]:
        return self.losses(self.rng)

    def step(self, batch: torch.Tensor) -> float:
        self.optimizer.zero_grad()
        batch.backward()
        self.optimizer.step()
        return batch.item()

    def fit(self, training: HeadTraining, monitor: str, on_epoch: OnEpoch | None, desc: str) -> FitResult:
        """Train until ``training.epochs`` or ``training.patience`` epochs without a better ``monitor``."""
        return fit(
            self,
            epochs=training.epochs,
            patience=training.patience,
            min_delta=training.min_delta,
            monitor=monitor,
            on_epoch=on_epoch,
            desc=desc,
        )


class ITMTrainer(HeadTrainer):
    """For each image: its caption (match), a hard negative caption, a hard negative image for the
    caption, optionally in-batch negatives, the dataset's own negatives and the listwise term."""

    def __init__(
        self,
        head: ITMHead,
        train: PairSet,
        val: PairSet,
        training: HeadTraining,
        options: ITMOptions,
        seed: int,
        val_probe: PairSet | None,
        val_base: Ranks | None,
    ) -> None:
        seed_everything(seed)
        head.fit_statistics(train.image, train.text)
        self.itm, self.train, self.val, self.training, self.options = head, train, val, training, options
        self.val_probe, self.val_base = val_probe, val_base
        self.neg_captions, self.neg_images = hard_negatives(
            train.image_emb, train.caption_emb, train.caption_image, options.hard_pool, train.image_group
        )
        self.captions = captions_per_image(train.caption_image, len(train.image))
        self.usable = [i for i, c in enumerate(self.captions) if c]
        self.generator = torch.Generator().manual_seed(seed)
        self.parts = [
            p
            for p in options.itm_select.split("+")
            if (p != "rerank" or val_base is not None) and (p != "probe" or val_probe is not None)
        ] or ["auc"]
        super().__init__(head, training, seed)

    def losses(self, rng: random.Random) -> Iterator[torch.Tensor]:
        train, options = self.train, self.options
        order = self.usable[:]
        rng.shuffle(order)
        for b in range(0, len(order), self.training.batch_size):
            batch = order[b : b + self.training.batch_size]
            pos = [rng.choice(self.captions[i]) for i in batch]
            neg_c = [int(self.neg_captions[i, rng.randrange(self.neg_captions.shape[1])]) for i in batch]
            neg_i = [int(self.neg_images[c, rng.randrange(self.neg_images.shape[1])]) for c in pos]
            images, texts = batch + batch + neg_i, pos + neg_c + pos
            labels = [1.0] * len(batch) + [0.0] * (2 * len(batch))
            if options.in_batch_negatives and len(batch) > 1:
                extra_i, extra_t = in_batch_negatives(train, batch, pos, self.generator)
                images, texts, labels = images + extra_i, texts + extra_t, labels + [0.0] * len(extra_i)
            if train.negatives is not None and train.canonical is not None:
                # the true caption in the negatives' template, against every negative kind
                kinds = train.negatives.shape[1]
                images += batch * (1 + kinds)
                texts += train.canonical[batch].tolist() + train.negatives[batch].T.flatten().tolist()
                labels += [1.0] * len(batch) + [0.0] * (kinds * len(batch))
            target = torch.tensor(labels)
            logits = self.itm.score(train, torch.tensor(images), torch.tensor(texts))
            balance = (target == 0).sum() / (target == 1).sum()  # weight the matches as much as the non-matches
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=balance)
            if options.listwise:
                loss = loss + listwise_loss(
                    self.itm, train, batch, pos, self.neg_captions, self.neg_images, options.listwise, self.generator
                )
            yield loss

    def validate(self) -> dict[str, float]:
        head, val, val_probe = self.itm, self.val, self.val_probe
        out = {f"val_{k}": v for k, v in evaluate_itm(head, val).items()}
        if val_probe is not None:
            scores = probe_pair_scores(lambda i, t: head.predict_pairs(val_probe, i, t), val_probe)
            out.update({f"val_{k}": v for k, v in scores.items()})
        if self.val_base is not None:
            found = candidates(head, val, self.options.rerank_k, self.val_base)
            choice = choose_both(found)
            out["val_rerank_r1"] = rerank_r1(found, choice)
            for d in DIRECTIONS:
                out.update({f"val_{k}": v for k, v in choice[d].as_metrics(d).items()})
        names = {"rerank": "val_rerank_r1", "probe": "val_probe_accuracy", "auc": "val_itm_auc"}
        out["val_select"] = sum(out[names[p]] for p in self.parts)
        return out


def train_itm(
    head: ITMHead,
    train: PairSet,
    val: PairSet,
    training: HeadTraining,
    options: ITMOptions,
    seed: int = 0,
    on_epoch: OnEpoch | None = None,
    val_probe: PairSet | None = None,
    val_base: Ranks | None = None,
) -> FitResult:
    """Train the ITM head: for each image, its caption (match), a hard negative caption, and a hard
    negative image for the caption, sampled from the ``hard_pool`` most similar by the contrastive
    matcher; with ``options.in_batch_negatives``, also a negative caption and image drawn from the
    batch by contrastive similarity (ALBEF); and, when ``train.negatives`` is set, the image's own
    hard-negative captions against its true caption in the same template.

    The best epoch is chosen by ``options.itm_select`` on the validation split: ``rerank`` is the mean
    R@1 of both directions after reranking the contrastive top ``options.rerank_k`` with the head (ITM
    logit plus a contrastive weight, ``k`` and weight chosen on validation too; needs ``val_base``,
    the contrastive validation ranks), ``probe`` the probe accuracy (needs ``val_probe``), ``auc`` the
    ITM AUC, ``rerank+probe`` the sum of the first two. What is missing is left out of the sum; with
    nothing left, ``auc``."""
    trainer = ITMTrainer(head, train, val, training, options, seed, val_probe, val_base)
    return trainer.fit(training, "val_select", on_epoch, "ITM head")


class VQATrainer(HeadTrainer):
    """The answer classifier with cross-entropy; answers outside the answer set (-1) are ignored."""

    def __init__(self, head: FusionHead, train: QASet, val: QASet, training: HeadTraining, seed: int) -> None:
        seed_everything(seed)
        head.fit_statistics(train.image, train.question)
        self.vqa, self.train, self.val, self.batch_size = head, train, val, training.batch_size
        self.rows = [n for n in range(len(train.answer)) if train.answer[n] >= 0]
        super().__init__(head, training, seed)

    def losses(self, rng: random.Random) -> Iterator[torch.Tensor]:
        order = self.rows[:]
        rng.shuffle(order)
        for b in range(0, len(order), self.batch_size):
            batch = torch.tensor(order[b : b + self.batch_size])
            logits = self.vqa(self.train.image, self.train.question_image[batch], self.train.question, batch)
            yield F.cross_entropy(logits, self.train.answer[batch])

    def validate(self) -> dict[str, float]:
        return {"val_vqa_accuracy": evaluate_vqa(self.vqa, self.val)["vqa_accuracy"]}


def train_vqa(
    head: FusionHead,
    train: QASet,
    val: QASet,
    training: HeadTraining,
    seed: int = 0,
    on_epoch: OnEpoch | None = None,
) -> FitResult:
    """Train the answer classifier; the epoch with the best validation accuracy is kept."""
    return VQATrainer(head, train, val, training, seed).fit(training, "val_vqa_accuracy", on_epoch, "VQA head")
