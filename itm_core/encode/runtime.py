"""Compiled inference for locked towers.

An encoder that can run compiled implements ``set_compiled(on: bool)`` (for example by wrapping its
forward in ``torch.compile``). Compiling costs tens of seconds on a CPU, so ``compile="auto"`` turns it
on only for passes of at least ``AUTO_COMPILE_ITEMS`` items; ``"on"`` and ``"off"`` force the choice.
Batches are padded to one fixed size so the compiled graph is built once. Before the compiled
forward is used, its output on the first batch is compared with the eager one: beyond ``TOLERANCE``
the pass stays eager (with a warning), so cached rows never depend on the choice.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch

AUTO_COMPILE_ITEMS = int(os.environ.get("ITM_AUTO_COMPILE_ITEMS", "6000"))
TOLERANCE = 1e-4
log = logging.getLogger(__name__)


def wants_compile(encoder: Any, what: str, n_items: int, mode: str) -> bool:
    """Whether a pass of ``n_items`` should run ``encoder`` compiled under ``mode``."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"compile must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off" or what != "pooled" or not hasattr(encoder, "set_compiled"):
        return False
    return mode == "on" or n_items >= AUTO_COMPILE_ITEMS


class Accelerator:
    """Runs ``compute`` on batches eagerly, or compiled once the first batch agrees with eager."""

    def __init__(self, encoder: Any, what: str, n_items: int, mode: str, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.enabled = wants_compile(encoder, what, n_items, mode)
        if not self.enabled and hasattr(encoder, "set_compiled"):
            encoder.set_compiled(False)  # an earlier pass may have left it compiled
        self.verified = False
        self.max_difference: float | None = None

    def _padded(self, compute: Callable[[list[Any]], dict[str, torch.Tensor]], values: list[Any]) -> dict[str, torch.Tensor]:
        n = len(values)
        padded = values + [values[-1]] * (self.batch_size - n) if n < self.batch_size else values
        return {f: t[:n] for f, t in compute(padded).items()}

    def run(self, compute: Callable[[list[Any]], dict[str, torch.Tensor]], values: list[Any]) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return compute(values)
        if self.verified:
            return self._padded(compute, values)
        eager = compute(values)
        self.encoder.set_compiled(True)
        try:
            compiled = self._padded(compute, values)
            self.max_difference = max(float((compiled[f].float() - eager[f].float()).abs().max()) for f in eager)
        except Exception as exc:  # a backend that cannot compile this model: stay eager
            log.warning("compiled inference failed for %s (%s: %s); encoding eagerly", getattr(self.encoder, "name", "encoder"), type(exc).__name__, exc)
            self.max_difference = None
        if self.max_difference is None or self.max_difference > TOLERANCE:
            if self.max_difference is not None:
                log.warning("compiled %s differs from eager by %.2e > %.0e; encoding eagerly", getattr(self.encoder, "name", "encoder"), self.max_difference, TOLERANCE)
            self.encoder.set_compiled(False)
            self.enabled = False
        self.verified = True
        return eager
