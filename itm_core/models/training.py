"""Contrastive training of a matcher's heads on cached tower features (the LiT recipe).

Symmetric contrastive loss (image-to-text and text-to-image cross-entropy) with a learned
temperature; one caption per image in each pass so a batch holds no duplicate images; validation
retrieval every epoch; early stopping on a validation metric; the best weights restored at the end
(the loop is :func:`itm_core.models.loop.fit`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from itm_core.contract.components import TrainableEncoder
from itm_core.contract.params import Params
from itm_core.data.pairs import captions_per_image
from itm_core.encode.features import FeatureSplit
from itm_core.errors import ModelError
from itm_core.models.loop import (
    FitResult,
    Trainer,
    adamw,
    fit,
    one_cycle,
    scheduler_step,
    seed_everything,
    settle_precision,
    step_autocast,
)
from itm_core.models.matcher import Matcher, ProjectionHead
from itm_core.models.process_group import (
    Ranks,
    average_gradients,
    broadcast_parameters,
    gather_with_grad,
    share_decision,
)
from itm_core.models.retrieval import ranks, recall_metrics

EPOCH_PAIRS = 150_000  # an epoch of `passes: 0` draws at least this many pairs
LOW_RANK = 256  # the first layer's rank under `input_rank: auto` ...
LOW_RANK_IMAGES = 20_000  # ... from this many training images up
RecallKey = Literal["rsum", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]


class ContrastiveTraining(Params):
    """The matcher's heads and their contrastive training."""

    heads: Literal["train", "none"] = Field(
        "train",
        description="train: projection heads over the towers, trained contrastively; none: register the pretrained "
        "pair itself (its encoders must share a joint space, as clip's two towers of one checkpoint do), its scores "
        "the towers' cosine similarities",
    )
    epochs: int = Field(40, ge=1, description="Maximum epochs")
    batch_size: int = Field(256, ge=2, description="Images per contrastive batch")
    passes: int = Field(
        0,
        ge=0,
        description="Passes over the training images in an epoch, each drawing one caption per image (0: enough "
        f"for {EPOCH_PAIRS:,} pairs an epoch, at most one per caption of an image: every caption of a small "
        "dataset each epoch, one caption per image of a large one)",
    )
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (one-cycle schedule)")
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(
        6,
        ge=1,
        description="Stop after this many epochs without validation improvement, counted in epochs of every "
        "caption: with one caption of five per image an epoch counts a fifth (see passes)",
    )
    monitor: RecallKey = Field("rsum", description="Validation metric for early stopping and the best checkpoint")
    embed_dim: int = Field(256, ge=2, description="Joint embedding dimension")
    hidden_dim: int = Field(1024, ge=0, description="Hidden width of the projection heads (0: linear heads)")
    dropout: float = Field(0.1, ge=0, lt=1)
    input_rank: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        "auto",
        description="A head over features wider than hidden_dim (efficientnet's 6,400) first maps them linearly "
        "to this many dimensions: its first layer factored through a low rank, a step 1.6 to 2 times cheaper "
        f"(0: a full first layer; auto: {LOW_RANK} from {LOW_RANK_IMAGES:,} training images up, where the steps "
        "it saves buy more passes, a full first layer below, where it costs a few rsum)",
    )
    seed: int = Field(0, description="Seed for weights, batches and caption sampling")
    unlock: list[Literal["image", "text"]] = Field(
        default_factory=list,
        description="Towers to fine-tune with the heads (trainable encoders only, e.g. clip); locked by default",
    )
    tower_lr: float = Field(1e-5, gt=0, description="Peak learning rate of unlocked towers")
    time_limit_s: float = Field(
        0,
        ge=0,
        description="End training after the epoch that passes this many seconds (0: no limit); "
        "the best epoch so far is kept",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16: training steps run under bfloat16 autocast (weights, loss and validation stay "
        "float32); auto: bf16 where it runs natively (a CPU with AVX512-BF16 or AMX, a GPU that supports it), "
        "fp32 elsewhere, where emulated bfloat16 is much slower",
    )
    resume: bool = Field(
        False,
        description="Continue the last unfinished run of these same parameters from its last checkpoint "
        "(after a crash, kill or cancel)",
    )
    checkpoint_every: int = Field(
        5,
        ge=0,
        description="Also log the checkpoint to the MLflow run every this many epochs (0: never); "
        "it is written locally every epoch",
    )
    processes: int = Field(
        1,
        ge=1,
        le=256,
        description="Train data-parallel in this many processes on this machine (torch.distributed, gloo): "
        "each embeds its slice of every global batch and the loss spans the whole batch, as in one process",
    )

    @field_validator("input_rank", mode="before")
    @classmethod
    def _rank(cls, value: Any) -> Any:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError(f"expected 'auto' or a number of dimensions, 0 or more (0: a full first layer), got {value!r}")

    @model_validator(mode="after")
    def _batch_splits(self) -> ContrastiveTraining:
        if self.processes > self.batch_size:
            raise ValueError(
                f"training.processes ({self.processes}) is larger than training.batch_size ({self.batch_size}): "
                "every process takes a slice of each batch; use at most batch_size processes"
            )
        return self

    def rank_for(self, images: int) -> int:
        """The heads' ``input_rank`` on a training split of ``images`` images (``auto`` settled)."""
        if self.input_rank == "auto":
            return LOW_RANK if images >= LOW_RANK_IMAGES else 0
        return self.input_rank

    def build_matcher(
        self, image_encoder: dict[str, Any], text_encoder: dict[str, Any], image_dim: int, text_dim: int, images: int
    ) -> Matcher:
        """A matcher whose heads these options describe, over towers of these dimensions, before training on
        ``images`` training images."""
        return Matcher(
            image_encoder,
            text_encoder,
            image_dim,
            text_dim,
            embed_dim=self.embed_dim,
            hidden_dim=self.hidden_dim,
            dropout=self.dropout,
            input_rank=self.rank_for(images),
        )


@dataclass
class LiveTower:
    """An unlocked tower: features come from ``encoder.forward_features`` on the raw items, with gradients.

    ``train_items`` / ``val_items`` are image paths or caption strings, aligned with the feature rows.
    """

    encoder: TrainableEncoder
    train_items: Sequence[Any]
    val_items: Sequence[Any]
    batch_size: int = 64

    def features(self, items: Sequence[Any]) -> torch.Tensor:
        from itm_core.data import load_images

        inputs = load_images([Path(p) for p in items]) if self.encoder.modality == "image" else list(items)
        return self.encoder.forward_features(inputs).float()

    @torch.no_grad()
    def all_features(self, items: Sequence[Any]) -> torch.Tensor:
        self.encoder.train_module().eval()
        return torch.cat([self.features(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)])


def captions_each(images: int, captions: int) -> int:
    """Captions per image, rounded, at least one."""
    return max(1, round(captions / max(1, images)))


def auto_passes(images: int, captions: int) -> int:
    """Passes of ``passes: 0``: as many as make an epoch of at least ``EPOCH_PAIRS`` pairs, at most one
    per caption of an image (2,000 images with five captions each: 5; 29,000: 1)."""
    return max(1, min(captions_each(images, captions), math.ceil(EPOCH_PAIRS / max(1, images))))


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP: matching pairs lie on the diagonal."""
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def evaluate_features(matcher: Matcher, split: FeatureSplit) -> dict[str, float]:
    """Retrieval metrics of ``matcher`` on pre-computed tower features."""
    matcher.eval()
    img = matcher.embed_image_features(split.image)
    txt = matcher.embed_text_features(split.text)
    return recall_metrics(ranks(img, txt, split.caption_image, matcher.similarity))


def _flatten_rng(state: tuple[Any, ...]) -> list[Any]:
    """``random.Random.getstate()`` as a flat list of numbers (what ``torch.load(weights_only=True)`` reads)."""
    version, internal, gauss = state
    return [version, *internal, gauss]


def _python_rng_state(flat: list[Any]) -> tuple[Any, ...]:
    return (int(flat[0]), tuple(int(v) for v in flat[1:-1]), flat[-1])


class ContrastiveTrainer(Trainer):
    """The heads (and unlocked towers) on one global batch per step: each process embeds its slice,
    the loss spans the gathered batch, gradients are averaged over the processes."""

    def __init__(
        self,
        matcher: Matcher,
        train: FeatureSplit,
        val: FeatureSplit,
        options: ContrastiveTraining,
        unlocked: dict[str, LiveTower],
        ranks: Ranks,
    ) -> None:
        seed_everything(options.seed)
        self.matcher, self.train, self.val, self.options, self.unlocked, self.ranks = (
            matcher,
            train,
            val,
            options,
            unlocked,
            ranks,
        )
        self.main = ranks.main
        # Weights, optimiser state, the loss and validation stay float32; only the steps' matrix products run in
        # bfloat16.
        device = next(matcher.parameters()).device.type
        self.precision = settle_precision(options.precision, device)
        self.autocast = step_autocast(self.precision, device)
        for head, rows in ((matcher.image_head, train.image), (matcher.text_head, train.text)):
            if not isinstance(head, ProjectionHead):
                raise ModelError("this matcher has no projection heads to train (it was built with heads=False)")
            head.set_statistics(rows)
        self.towers = {m: t.encoder.train_module() for m, t in unlocked.items()}
        for module in (matcher, *self.towers.values()):
            broadcast_parameters(module, ranks)
        groups: list[dict[str, Any]] = [{"params": list(matcher.parameters()), "lr": options.lr}]
        groups += [
            {"params": [p for p in mod.parameters() if p.requires_grad], "lr": options.tower_lr}
            for mod in self.towers.values()
        ]
        self.optimizer = adamw(groups, weight_decay=options.weight_decay)
        self.captions = captions_per_image(train.caption_image, len(train.image))
        self.usable = [i for i, c in enumerate(self.captions) if c]
        self.passes = options.passes or auto_passes(len(self.usable), len(train.text))
        # patience counts epochs of every caption: epochs of fewer passes count for less
        self.patience = math.ceil(options.patience * captions_each(len(self.usable), len(train.text)) / self.passes)
        steps_per_epoch = self.passes * max(1, len(self.usable) // options.batch_size)
        self.scheduler = one_cycle(self.optimizer, [g["lr"] for g in groups], options.epochs * steps_per_epoch, 0.1)
        self.rng = random.Random(options.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"matcher": self.matcher, **self.towers}

    def batches(self) -> Iterator[tuple[list[int], list[int]]]:
        """Each pass, the usable images shuffled into global batches, each with one caption drawn per image."""
        size = self.options.batch_size
        for _ in range(self.passes):
            order = self.usable[:]
            self.rng.shuffle(order)
            for b in range(max(1, len(order) // size)):
                batch = order[b * size : (b + 1) * size]
                batch = batch[: len(batch) - len(batch) % self.ranks.world]  # equal slices
                if len(batch) < 2:
                    continue
                yield batch, [self.rng.choice(self.captions[i]) for i in batch]

    def _features(self, modality: str, rows: list[int], cached: torch.Tensor) -> torch.Tensor:
        tower = self.unlocked.get(modality)
        return cached[rows] if tower is None else tower.features([tower.train_items[i] for i in rows])

    def step(self, batch: tuple[list[int], list[int]]) -> float:
        images, captions = batch
        mine = self.ranks.slice(len(images))
        with self.autocast:
            image_emb = self.matcher.embed_image_features(self._features("image", images[mine], self.train.image))
            text_emb = self.matcher.embed_text_features(self._features("text", captions[mine], self.train.text))
        scale = self.matcher.logit_scale.clamp(max=math.log(100.0)).exp()
        loss = clip_loss(
            scale * gather_with_grad(image_emb.float(), self.ranks) @ gather_with_grad(text_emb.float(), self.ranks).T
        )
        self.optimizer.zero_grad()
        loss.backward()
        for module in self.modules().values():
            average_gradients(module, self.ranks)
        self.optimizer.step()
        scheduler_step(self.scheduler)
        return loss.item()

    def epoch_metrics(self) -> dict[str, float]:
        return {"temperature": 1.0 / self.matcher.logit_scale.exp().item()}

    def validate(self) -> dict[str, float]:
        """Retrieval on the validation split; unlocked towers re-encode it first."""
        val = self.val
        if self.unlocked:
            val = FeatureSplit(
                image=self.unlocked["image"].all_features(self.unlocked["image"].val_items)
                if "image" in self.unlocked
                else val.image,
                text=self.unlocked["text"].all_features(self.unlocked["text"].val_items)
                if "text" in self.unlocked
                else val.text,
                caption_image=val.caption_image,
            )
        return {f"val_{k}": v for k, v in evaluate_features(self.matcher, val).items()}

    def agree(self, values: dict[str, float]) -> dict[str, float]:
        return share_decision(values, self.ranks)

    def state_dict(self) -> dict[str, Any]:
        return {
            "matcher": self.matcher.state_dict(),
            "towers": {m: mod.state_dict() for m, mod in self.towers.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _flatten_rng(self.rng.getstate()),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.matcher.load_state_dict(state["matcher"])
        for m, mod in self.towers.items():
            mod.load_state_dict(state["towers"][m])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.setstate(_python_rng_state(state["rng"]))
        torch.set_rng_state(state["torch_rng"])


def train_contrastive(
    matcher: Matcher,
    train: FeatureSplit,
    val: FeatureSplit,
    options: ContrastiveTraining,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    unlocked: dict[str, LiveTower] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    ranks: Ranks | None = None,
) -> FitResult:
    """Train ``matcher``'s heads and temperature; leaves the best validation weights in ``matcher``.

    ``options.time_limit_s`` above 0 ends training after the epoch that passes it.
    ``options.precision`` ``"bf16"`` runs each step's forward pass under bfloat16 autocast (faster on
    GPUs and on CPUs with AVX512-BF16 or AMX; much slower on CPUs without them).
    Towers named in ``unlocked`` (``"image"``, ``"text"``) are fine-tuned too, at ``options.tower_lr``:
    their batches are encoded live, and validation re-encodes them every epoch.
    ``checkpoint(state)`` is called at the end of every epoch with everything needed to go on
    (weights, optimiser, schedule, random states, early-stopping state, history); training given
    that ``resume`` state continues from the next epoch and ends as the uninterrupted run would.

    With ``ranks`` of more than one process (``torch.distributed`` initialised, see
    ``itm_core.models.distributed``) every process draws the same global batches, encodes and
    embeds its own slice of each, and the loss is computed over the whole batch from embeddings
    gathered with their gradients; gradients are averaged over the processes, so each step equals
    the one-process step on the same global batch. Rank 0 decides early stopping and alone calls
    ``on_epoch`` and ``checkpoint``.
    """
    trainer = ContrastiveTrainer(matcher, train, val, options, unlocked or {}, ranks or Ranks())
    return fit(
        trainer,
        epochs=options.epochs,
        patience=trainer.patience,
        time_limit_s=options.time_limit_s,
        monitor=f"val_{options.monitor}",
        on_epoch=on_epoch,
        checkpoint=checkpoint,
        resume=resume,
        desc="contrastive heads",
    )
