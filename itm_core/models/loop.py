"""The one training loop every trainer runs (the matcher's heads, the ITM and VQA heads, the captioner,
the text-to-image models): epochs of steps, validation, early stopping on a monitored metric, a time
limit, the best weights kept, a checkpoint after every epoch and resume from it, and a callback per
epoch. What differs between models is what a :class:`Trainer` supplies: its batches, its step and
its validation. The schedule helpers every step uses (precision, one-cycle, clipped steps) live here too.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from itm_core.errors import ParamsError
from itm_core.progress import Tracker

PRECISIONS = ("fp32", "bf16")
STOPS = ("epochs", "patience", "time limit")


def cpu_bf16_flags() -> list[str]:
    """The bfloat16 instructions this CPU has (``avx512_bf16``, ``amx_bf16``) from /proc/cpuinfo; empty
    where it has none or the file cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


def settle_precision(precision: str, device_type: str = "cpu") -> str:
    """``auto`` becomes ``bf16`` where bfloat16 runs natively (a CPU with AVX512-BF16 or AMX, a GPU that
    supports it) and ``fp32`` elsewhere, where emulated bfloat16 is slower; ``fp32`` and ``bf16`` stay
    as they are."""
    if precision not in (*PRECISIONS, "auto"):
        raise ParamsError(f"training precision must be auto, {' or '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_flags() else "fp32"


def step_autocast(precision: str, device_type: str = "cpu") -> torch.autocast:
    """What a training step's forward pass runs under: bfloat16 autocast with ``precision`` ``bf16``
    (weights, optimiser state and the backward's accumulation stay float32), else nothing."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


FUSED_DEVICES = ("cpu", "cuda")


def adamw(params: Iterable[Any], **options: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` (tensors or parameter groups), with its fused kernel where every
    parameter allows it (floating point, on a CPU or a CUDA device): the same update in one pass over the
    weights instead of several (a step of the default matcher heads on 2 cores: 27 ms against 5 ms)."""
    groups, fused = _fusable(params)
    return torch.optim.AdamW(groups, fused=fused, **options)


def adam(params: Iterable[Any], **options: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its fused kernel where every parameter allows it, as :func:`adamw`."""
    groups, fused = _fusable(params)
    return torch.optim.Adam(groups, fused=fused, **options)


def _fusable(params: Iterable[Any]) -> tuple[list[Any], bool]:
    """``params`` as a list (groups copied, their tensors listed) and whether every tensor allows a fused update."""
    groups = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]
    tensors = [p for group in groups for p in (group["params"] if isinstance(group, dict) else [group])]
    return groups, all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in tensors)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float | list[float], total_steps: int, pct_start: float) -> Any:
    """A one-cycle schedule that also works for very short runs: torch's ``OneCycleLR`` divides by
    zero when the warm-up is one step or less, so such runs warm up for half of at least three steps."""
    if pct_start * total_steps <= 1:
        pct_start, total_steps = 0.5, max(total_steps, 3)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start)


def scheduler_step(scheduler: Any) -> None:
    """Step ``scheduler``, held at its last value once its steps are used up."""
    if scheduler.last_epoch < scheduler.total_steps - 1:
        scheduler.step()


def clipped_step(
    loss: torch.Tensor,
    module: nn.Module | list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    max_norm: float = 1.0,
) -> float:
    """Backpropagate ``loss``, clip the gradient norm of ``module``, step the optimizer and the
    scheduler; the loss as a float. Given a list of parameters instead of a module, only those
    receive the gradient."""
    optimizer.zero_grad()
    if isinstance(module, nn.Module):
        loss.backward()
        params = list(module.parameters())
    else:
        loss.backward(inputs=module)
        params = module
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    scheduler_step(scheduler)
    return loss.item()


class Trainer:
    """What one model supplies to :func:`fit`. ``batches`` yields one epoch's batches (drawing its
    random choices as it goes), ``step`` learns from one and returns its loss, ``validate`` returns the
    validation metrics of the epoch. The rest are hooks with defaults that do nothing."""

    #: whether this process reports and checkpoints (rank 0 of a data-parallel job)
    main: bool = True

    def modules(self) -> dict[str, nn.Module]:
        """The modules put in training mode each epoch; with a monitored metric, their weights at the
        best epoch are kept and restored at the end."""
        raise NotImplementedError

    def batches(self) -> Iterable[Any]:
        raise NotImplementedError

    def step(self, batch: Any) -> float:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def start_epoch(self, epoch: int, elapsed: float) -> None:
        """Before the epoch's first step (``elapsed``: seconds since training started)."""

    def epoch_metrics(self) -> dict[str, float]:
        """Figures of the epoch besides its loss (a temperature, a stage), reported before validation."""
        return {}

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """After the epoch was validated and reported."""

    def agree(self, values: dict[str, float]) -> dict[str, float]:
        """The same ``values`` on every process of a data-parallel job (rank 0's)."""
        return values

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs besides the loop's own state: weights, optimiser, schedule, random state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from a checkpoint's :meth:`state_dict`."""

    def finish(self, result: FitResult) -> None:
        """After the last epoch, once the best weights are back (may set ``result.best_epoch``)."""


@dataclass
class FitResult:
    """What training did: one row of metrics per epoch, the epoch whose weights were kept and its
    monitored value, the steps, the seconds, and what stopped it (``epochs``, ``patience``, ``time limit``)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = float("nan")
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "epochs"


def fit(
    trainer: Trainer,
    *,
    epochs: int,
    patience: int | None = None,
    min_delta: float = 0.0,
    time_limit_s: float = 0.0,
    monitor: str | None = None,
    mode: Literal["max", "min"] = "max",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    desc: str = "training",
) -> FitResult:
    """Train for at most ``epochs``. Each epoch reports ``train_loss`` (the mean of its steps), the
    trainer's :meth:`~Trainer.epoch_metrics` and its validation to ``on_epoch(epoch, metrics)``.

    With ``monitor`` (a metric name; ``mode`` says whether higher or lower is better) the weights of
    the best epoch are kept and restored at the end, and ``patience`` epochs without a better value
    stop training (an epoch counts against them unless it beats the value that last reset them by more
    than ``min_delta``, so a run that only creeps stops; the best epoch is kept all the same); without
    it the last epoch's weights stay. ``time_limit_s`` above 0 ends training
    after the epoch that passes it. ``checkpoint(state)`` is called after every epoch with what
    ``resume`` needs to go on from the next one and end as the uninterrupted run would."""
    sign = 1.0 if mode == "max" else -1.0
    start = time.perf_counter()
    result = FitResult(best_value=-sign * math.inf if monitor else math.nan)
    modules = trainer.modules()

    def snapshot() -> dict[str, Any]:
        return copy.deepcopy({name: module.state_dict() for name, module in modules.items()})

    best_state = snapshot() if monitor else {}
    mark = result.best_value  # the value that last reset the patience
    stale, first_epoch, done = 0, 1, False
    if resume is not None:
        trainer.load_state_dict(resume)
        best_state, stale, done = resume["best_state"], int(resume["stale"]), bool(resume["done"])
        result.best_value, result.best_epoch = float(resume["best_value"]), int(resume["best_epoch"])
        mark = float(resume.get("mark", result.best_value))
        result.history, result.steps = list(resume["history"]), int(resume.get("steps", 0))
        first_epoch = int(resume["epoch"]) + 1
        start -= float(resume["elapsed"])
    last = first_epoch - 1 if done else epochs
    tracker = Tracker(desc, last, "epoch", at_most=bool(monitor and patience) or bool(time_limit_s))
    tracker.step.done, tracker.step.started = first_epoch - 1, start  # a resumed run counts its earlier epochs
    for epoch in range(first_epoch, last + 1):
        trainer.start_epoch(epoch, time.perf_counter() - start)
        for module in modules.values():
            module.train()
        losses = []
        for batch in trainer.batches():
            losses.append(trainer.step(batch))
        result.steps += len(losses)
        metrics = {"train_loss": float(np.mean(losses)) if losses else float("nan"), **trainer.epoch_metrics()}
        metrics = trainer.agree({**metrics, **trainer.validate()})
        result.history.append({"epoch": epoch, **metrics})
        if on_epoch is not None and trainer.main:
            on_epoch(epoch, metrics)
        note = f"loss {metrics['train_loss']:.4f}"
        if monitor:
            value = metrics[monitor]
            note += f", {monitor} {value:.3f}"
            if sign * value > sign * result.best_value:
                result.best_value, result.best_epoch = value, epoch
                best_state = snapshot()
            if sign * (value - mark) > min_delta:
                mark, stale = value, 0
            else:
                stale += 1
        else:
            result.best_epoch = epoch
        trainer.end_epoch(epoch, metrics)
        tracker.advance(note=note)
        stop = 0
        if monitor and patience is not None and stale >= patience:
            stop = STOPS.index("patience")
        elif time_limit_s and time.perf_counter() - start > time_limit_s:
            stop = STOPS.index("time limit")
        stop = int(trainer.agree({"stop": float(stop)})["stop"])  # rank 0's clock decides
        done = stop > 0
        if done:
            result.stopped = STOPS[stop]
        if checkpoint is not None and trainer.main:
            checkpoint(
                {
                    **trainer.state_dict(),
                    "epoch": epoch,
                    "done": done,
                    "best_state": best_state,
                    "best_value": result.best_value,
                    "best_epoch": result.best_epoch,
                    "stale": stale,
                    "mark": mark,
                    "history": result.history,
                    "steps": result.steps,
                    "elapsed": time.perf_counter() - start,
                }
            )
        if done:
            break
    best = f", best epoch {result.best_epoch}" if monitor else ""
    tracker.finish(f"stopped by {result.stopped}{best}" if result.stopped != "epochs" else best.lstrip(", "))
    if monitor:
        for name, module in modules.items():
            module.load_state_dict(best_state[name])
    for module in modules.values():
        module.eval()
    trainer.finish(result)
    result.seconds = time.perf_counter() - start
    return result
