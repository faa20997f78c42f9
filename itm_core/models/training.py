"""Pure-PyTorch training of a matcher's heads on cached tower features (the LiT recipe).

Symmetric contrastive loss (image-to-text and text-to-image cross-entropy) with a learned
temperature; one caption per image in each pass so a batch holds no duplicate images; validation
retrieval every epoch; early stopping on a validation metric; the best weights restored at the end.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from itm_core.encode.embed import FeatureSplit
from itm_core.models.matcher import Matcher
from itm_core.models.process_group import (
    Ranks,
    average_gradients,
    broadcast_parameters,
    gather_with_grad,
    share_decision,
)
from itm_core.models.retrieval import ranks, recall_metrics

PRECISIONS = ("fp32", "bf16")


def cpu_bf16_flags() -> list[str]:
    """The bfloat16 instructions this CPU has (``avx512_bf16``, ``amx_bf16``) from /proc/cpuinfo; empty
    where it has none or the file cannot be read (not Linux)."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return []
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


def settle_precision(precision: str) -> str:
    """``auto`` becomes ``bf16`` on a CPU that runs bfloat16 natively (AVX512-BF16 or AMX) and ``fp32``
    elsewhere, where emulated bfloat16 is slower; ``fp32`` and ``bf16`` stay as they are."""
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"training precision must be auto, {' or '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if cpu_bf16_flags() else "fp32"


def step_autocast(precision: str, device_type: str = "cpu") -> torch.autocast:
    """What a training step's forward pass runs under: bfloat16 autocast with ``precision`` ``bf16``
    (weights, optimiser state and the backward's accumulation stay float32), else nothing."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class ContrastiveConfig:
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 6
    monitor: str = "rsum"
    seed: int = 0
    tower_lr: float = 1e-5
    time_limit_s: float = 0.0
    precision: str = "fp32"  # "bf16": the forward pass of every step under bfloat16 autocast


@dataclass
class LiveTower:
    """An unlocked tower: features come from ``encoder.forward_features`` on the raw items, with gradients.

    ``train_items`` / ``val_items`` are image paths or caption strings, aligned with the feature rows.
    """

    encoder: Any
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


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = float("-inf")
    seconds: float = 0.0


@dataclass
class TrainSchedule:
    """What every trained generator's configuration shares: the optimisation schedule and a time
    limit (``time_limit_s`` above 0 ends training after the epoch that passes it)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    time_limit_s: float = 0.0
    # "bf16": each step's forward pass under bfloat16 autocast; "auto": bf16 where the device runs it natively
    precision: str = "fp32"


def clipped_step(
    loss: torch.Tensor,
    module: torch.nn.Module | list[torch.nn.Parameter],
    optimizer: Any,
    scheduler: Any,
    max_norm: float = 1.0,
) -> float:
    """Backpropagate ``loss``, clip the gradient norm of ``module``, step the optimizer and the
    scheduler (held at its last value once its steps are used up); the loss as a float. Given a list
    of parameters instead of a module, only those receive the gradient."""
    optimizer.zero_grad()
    if isinstance(module, torch.nn.Module):
        loss.backward()
        params = list(module.parameters())
    else:
        loss.backward(inputs=module)
        params = module
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    if scheduler.last_epoch < scheduler.total_steps - 1:
        scheduler.step()
    return loss.item()


def one_cycle(optimizer: Any, max_lr: float | list[float], total_steps: int, pct_start: float) -> Any:
    """A one-cycle schedule that also works for very short runs: torch's ``OneCycleLR`` divides by
    zero when the warm-up is one step or less, so such runs warm up for half of at least three steps."""
    if pct_start * total_steps <= 1:
        pct_start, total_steps = 0.5, max(total_steps, 3)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def captions_per_image(caption_image: torch.Tensor, n_images: int) -> list[list[int]]:
    """For each image, the indices of its captions."""
    lists: list[list[int]] = [[] for _ in range(n_images)]
    for j, i in enumerate(caption_image.tolist()):
        lists[i].append(j)
    return lists


def _flatten_rng(state: tuple) -> list[Any]:
    """``random.Random.getstate()`` as a flat list of numbers (what ``torch.load(weights_only=True)`` reads)."""
    version, internal, gauss = state
    return [version, *internal, gauss]


def _python_rng_state(flat: list[Any]) -> tuple:
    return (int(flat[0]), tuple(int(v) for v in flat[1:-1]), flat[-1])


def train_contrastive(
    matcher: Matcher,
    train: FeatureSplit,
    val: FeatureSplit,
    config: ContrastiveConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    unlocked: dict[str, LiveTower] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    ranks: Ranks = Ranks(),
) -> TrainResult:
    """Train ``matcher``'s heads and temperature; leaves the best validation weights in ``matcher``.

    ``config.time_limit_s`` above 0 ends training after the epoch that passes it.
    ``config.precision`` ``"bf16"`` runs each step's forward pass under bfloat16 autocast (faster on
    GPUs and on CPUs with AVX512-BF16 or AMX; much slower on CPUs without them).
    Towers named in ``unlocked`` (``"image"``, ``"text"``) are fine-tuned too, at ``config.tower_lr``:
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
    unlocked = unlocked or {}
    if config.precision not in PRECISIONS:
        raise ValueError(f"training precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    seed_everything(config.seed)
    device = next(matcher.parameters()).device
    # Weights, optimiser state, the loss and validation stay float32; only the steps' matrix products run in bfloat16.
    autocast = step_autocast(config.precision, device.type)
    start = time.perf_counter()
    matcher.image_head.set_statistics(train.image)
    matcher.text_head.set_statistics(train.text)
    modules = {m: t.encoder.train_module() for m, t in unlocked.items()}
    for module in (matcher, *modules.values()):
        broadcast_parameters(module, ranks)
    groups = [{"params": list(matcher.parameters()), "lr": config.lr}]
    groups += [
        {"params": [p for p in mod.parameters() if p.requires_grad], "lr": config.tower_lr} for mod in modules.values()
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    captions = captions_per_image(train.caption_image, len(train.image))
    usable = [i for i, c in enumerate(captions) if c]
    passes = max(1, round(len(train.text) / max(1, len(usable))))
    steps_per_epoch = passes * max(1, len(usable) // config.batch_size)
    scheduler = one_cycle(optimizer, [g["lr"] for g in groups], config.epochs * steps_per_epoch, 0.1)
    rng = random.Random(config.seed)
    result = TrainResult()

    def snapshot() -> dict[str, Any]:
        return copy.deepcopy({"matcher": matcher.state_dict(), **{m: mod.state_dict() for m, mod in modules.items()}})

    def batch_features(modality: str, rows: list[int], cached: torch.Tensor) -> torch.Tensor:
        tower = unlocked.get(modality)
        return cached[rows] if tower is None else tower.features([tower.train_items[i] for i in rows])

    best_state = snapshot()
    stale, first_epoch, elapsed, done = 0, 1, 0.0, False
    if resume is not None:
        matcher.load_state_dict(resume["matcher"])
        for m, mod in modules.items():
            mod.load_state_dict(resume["towers"][m])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        rng.setstate(_python_rng_state(resume["rng"]))
        torch.set_rng_state(resume["torch_rng"])
        best_state, stale, done = resume["best_state"], int(resume["stale"]), bool(resume["done"])
        result.best_value, result.best_epoch, result.history = (
            float(resume["best_value"]),
            int(resume["best_epoch"]),
            list(resume["history"]),
        )
        first_epoch, elapsed = int(resume["epoch"]) + 1, float(resume["elapsed"])
        start -= elapsed
    bar = tqdm(
        range(first_epoch, config.epochs + 1 if not done else first_epoch),
        desc="training",
        unit="epoch",
        leave=False,
        disable=None,
    )
    for epoch in bar:
        matcher.train()
        for mod in modules.values():
            mod.train()
        losses: list[float] = []
        for _ in range(passes):
            order = usable[:]
            rng.shuffle(order)
            for b in range(max(1, len(order) // config.batch_size)):
                batch = order[b * config.batch_size : (b + 1) * config.batch_size]
                batch = batch[: len(batch) - len(batch) % ranks.world]  # equal slices
                if len(batch) < 2:
                    continue
                picked = [rng.choice(captions[i]) for i in batch]
                mine = ranks.slice(len(batch))
                with autocast:
                    image_emb = matcher.embed_image_features(batch_features("image", batch[mine], train.image)).float()
                    text_emb = matcher.embed_text_features(batch_features("text", picked[mine], train.text)).float()
                scale = matcher.logit_scale.clamp(max=math.log(100.0)).exp()
                loss = clip_loss(scale * gather_with_grad(image_emb, ranks) @ gather_with_grad(text_emb, ranks).T)
                optimizer.zero_grad()
                loss.backward()
                for module in (matcher, *modules.values()):
                    average_gradients(module, ranks)
                optimizer.step()
                if scheduler.last_epoch < scheduler.total_steps - 1:
                    scheduler.step()
                losses.append(loss.item())
        metrics = {
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "temperature": 1.0 / matcher.logit_scale.exp().item(),
        }
        if unlocked:
            val = FeatureSplit(
                image=unlocked["image"].all_features(unlocked["image"].val_items) if "image" in unlocked else val.image,
                text=unlocked["text"].all_features(unlocked["text"].val_items) if "text" in unlocked else val.text,
                caption_image=val.caption_image,
            )
        metrics.update({f"val_{k}": v for k, v in evaluate_features(matcher, val).items()})
        metrics = share_decision(metrics, ranks)  # every rank follows rank 0's validation
        result.history.append({"epoch": epoch, **metrics})
        if on_epoch is not None and ranks.main:
            on_epoch(epoch, metrics)
        value = metrics[f"val_{config.monitor}"]
        bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", **{config.monitor: f"{value:.3f}"})
        if value > result.best_value:
            result.best_value, result.best_epoch, stale = value, epoch, 0
            best_state = snapshot()
        else:
            stale += 1
        done = stale >= config.patience or bool(
            config.time_limit_s and time.perf_counter() - start > config.time_limit_s
        )
        done = bool(share_decision({"done": float(done)}, ranks)["done"])  # rank 0's clock
        if checkpoint is not None and ranks.main:
            checkpoint(
                {
                    "epoch": epoch,
                    "done": done,
                    "matcher": matcher.state_dict(),
                    "towers": {m: mod.state_dict() for m, mod in modules.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": list(_flatten_rng(rng.getstate())),
                    "torch_rng": torch.get_rng_state(),
                    "best_state": best_state,
                    "best_value": result.best_value,
                    "best_epoch": result.best_epoch,
                    "stale": stale,
                    "history": result.history,
                    "elapsed": time.perf_counter() - start,
                }
            )
        if done:
            break
    bar.close()
    matcher.load_state_dict(best_state["matcher"])
    for m, mod in modules.items():
        mod.load_state_dict(best_state[m])
        mod.eval()
    matcher.eval()
    result.seconds = time.perf_counter() - start
    return result
