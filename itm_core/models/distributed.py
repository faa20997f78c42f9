"""Data-parallel contrastive training with ``torch.distributed`` (gloo on CPUs, nccl on GPUs).

Launched by ``torchrun`` (or ``accelerate launch``), which sets ``RANK``, ``WORLD_SIZE`` and the
rendezvous address; ``train_in_processes`` starts such a job on this machine for the ``retrain``
flow (``training.processes``) and runs the flow's own training loop in every process. Each process
takes its slice of the global batch; the embeddings of every slice
are gathered *with their gradients* (as open_clip's ``gather_with_grad``), so the contrastive loss
sees the whole global batch as its negatives, exactly as one process would. Every rank computes the
same global loss and the gradients are averaged over the ranks (as ``DistributedDataParallel``
does), which makes the update equal to the one-process update on the same global batch. Rank 0
alone logs and saves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from itm_core.models.loop import FitResult, adamw
from itm_core.models.matcher import Matcher
from itm_core.models.process_group import (
    Ranks,
    average_gradients,
    broadcast_parameters,
    gather_with_grad,
    init_from_env,
)
from itm_core.models.training import ContrastiveTraining, LiveTower, clip_loss, train_contrastive


def global_contrastive_loss(
    matcher: Matcher, image_features: torch.Tensor, text_features: torch.Tensor, ranks: Ranks
) -> torch.Tensor:
    """The symmetric contrastive loss over the global batch, from this rank's slice of features."""
    image = gather_with_grad(matcher.embed_image_features(image_features), ranks)
    text = gather_with_grad(matcher.embed_text_features(text_features), ranks)
    scale = matcher.logit_scale.clamp(max=torch.log(torch.tensor(100.0))).exp()
    return clip_loss(scale * image @ text.T)


def train_steps(
    matcher: Matcher, image: torch.Tensor, text: torch.Tensor, batches: list[torch.Tensor], lr: float, ranks: Ranks
) -> list[float]:
    """AdamW steps over ``batches`` (row indices of one global batch each) of aligned ``image`` /
    ``text`` features, data-parallel over ``ranks``; the global loss of each step."""
    broadcast_parameters(matcher, ranks)
    optimizer = adamw(matcher.parameters(), lr=lr)
    losses = []
    for rows in batches:
        mine = rows[ranks.slice(len(rows))]
        loss = global_contrastive_loss(matcher, image[mine], text[mine], ranks)
        optimizer.zero_grad()
        loss.backward()
        average_gradients(matcher, ranks)
        optimizer.step()
        losses.append(loss.item())
    return losses


EVENT = "itm-epoch "  # the line a training process prints after each epoch: the launcher logs it


def train_in_processes(
    processes: int,
    matcher: Matcher,
    train: Any,
    val: Any,
    config: ContrastiveTraining,
    unlocked: dict[str, LiveTower] | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint_path: Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int, bool], None] | None = None,
) -> FitResult:
    """``train_contrastive`` data-parallel in ``processes`` local processes (``torchrun
    --standalone``, gloo, the machine's cores shared out as torch threads); leaves the best weights
    in ``matcher`` and the unlocked towers and returns the ``FitResult``.

    The features travel as references to the embedding cache (``FeatureSplit`` pickles that way).
    Rank 0 writes the checkpoint to ``checkpoint_path`` every epoch and prints one line per epoch,
    which is passed on here to ``on_epoch(epoch, metrics)`` and, once that epoch's checkpoint is
    written, ``on_checkpoint(epoch, done)``; everything else the processes print is printed.
    """
    unlocked = unlocked or {}
    with tempfile.TemporaryDirectory(prefix="itm-train-") as tmp:
        spec, out = Path(tmp) / "spec.pt", Path(tmp) / "result.pt"
        torch.save(
            {
                "matcher": matcher,
                "train": train,
                "val": val,
                "config": config,
                "unlocked": unlocked,
                "resume": resume,
                "checkpoint": str(checkpoint_path) if checkpoint_path else None,
                "out": str(out),
            },
            spec,
        )
        threads = max(1, (os.cpu_count() or 1) // processes)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(processes),
            "-m",
            "itm_core.models.distributed",
            str(spec),
        ]
        tail: deque[str] = deque(maxlen=60)
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.startswith(EVENT):
                    event = json.loads(line[len(EVENT) :])
                    if on_epoch is not None:
                        on_epoch(event["epoch"], event["metrics"])
                    if on_checkpoint is not None and event["checkpoint"]:
                        on_checkpoint(event["epoch"], event["done"])
                else:
                    tail.append(line)
                    print(line, end="")
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.wait()
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(
                f"data-parallel training in {processes} processes failed (exit {proc.returncode}):\n{''.join(tail)}"
            )
        got = torch.load(out, weights_only=False)
    matcher.load_state_dict(got["matcher"])
    matcher.eval()
    for m, tower in unlocked.items():
        module = tower.encoder.train_module()
        module.load_state_dict(got["towers"][m])
        module.eval()
    return got["result"]


def main(argv: list[str] | None = None) -> None:
    """One training process of ``train_in_processes`` (``python -m itm_core.models.distributed SPEC``)."""
    spec = torch.load((argv or sys.argv[1:])[0], weights_only=False)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ranks = init_from_env("gloo")
    checkpoint_path = Path(spec["checkpoint"]) if spec["checkpoint"] else None
    latest: dict[str, Any] = {}

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        latest.update(epoch=epoch, metrics=metrics)

    def checkpoint(state: dict[str, Any]) -> None:
        if checkpoint_path is not None:
            checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint_path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(checkpoint_path)
        print(
            EVENT + json.dumps({**latest, "done": bool(state["done"]), "checkpoint": checkpoint_path is not None}),
            flush=True,
        )

    matcher, unlocked = spec["matcher"], spec["unlocked"]
    result = train_contrastive(
        matcher,
        spec["train"],
        spec["val"],
        spec["config"],
        on_epoch,
        unlocked,
        checkpoint=checkpoint,
        resume=spec["resume"],
        ranks=ranks,
    )
    if ranks.main:
        tmp = Path(spec["out"] + ".tmp")
        torch.save(
            {
                "matcher": matcher.state_dict(),
                "towers": {m: t.encoder.train_module().state_dict() for m, t in unlocked.items()},
                "result": result,
            },
            tmp,
        )
        tmp.replace(spec["out"])
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
