"""Compiled inference for locked towers: ONNX Runtime or ``torch.compile``.

An encoder that can run compiled implements ``set_compiled(on: bool)`` and, when it offers more
than ``torch.compile``, lists the runtimes it supports best first in ``runtimes`` (``"onnxruntime"``,
``"torch"``) and takes ``set_compiled(on, runtime=...)``. ``OnnxModule`` exports a module to ONNX
and runs it in ONNX Runtime, for plugins that want it, optionally with int8 weights (a different
encoder: a plugin offers it as an option, so its rows are cached under their own identity).

``compile="auto"`` picks the encoder's best installed runtime for passes large enough to repay
building it (``AUTO_ITEMS``: a second or two for ONNX Runtime, tens of seconds for
``torch.compile`` on a CPU); ``"on"`` forces the best runtime, ``"onnxruntime"`` or ``"torch"`` one of
them, ``"off"`` none. ``torch.compile`` batches are padded to one fixed size so its graph is built
once. Before a compiled forward is used, its output on the first batch is compared with the eager
one: beyond ``TOLERANCE`` the pass stays eager (with a warning), so cached rows never depend on the
choice.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from itm_core.contract.components import Encoder
from itm_core.errors import ParamsError

MODES = ("auto", "on", "off", "onnxruntime", "torch")
_AUTO_OVERRIDE = os.environ.get("ITM_AUTO_COMPILE_ITEMS")
AUTO_ITEMS = (
    {"onnxruntime": 512, "torch": 6000}
    if _AUTO_OVERRIDE is None
    else {"onnxruntime": int(_AUTO_OVERRIDE), "torch": int(_AUTO_OVERRIDE)}
)
TOLERANCE = 1e-4
log = logging.getLogger(__name__)


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def runtimes(encoder: Encoder) -> list[str]:
    """The compiled runtimes ``encoder`` supports and this installation has, best first."""
    if not hasattr(encoder, "set_compiled"):
        return []
    return [r for r in getattr(encoder, "runtimes", ("torch",)) if r != "onnxruntime" or onnxruntime_installed()]


def choose_runtime(encoder: Encoder, what: str, n_items: int, mode: str) -> str | None:
    """The runtime a pass of ``n_items`` runs ``encoder`` in under ``mode``; ``None``: eagerly."""
    if mode not in MODES:
        raise ParamsError(f"compile must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "onnxruntime" and not onnxruntime_installed():
        raise ParamsError(
            "compile: onnxruntime needs the onnxruntime package: pip install onnxruntime (or choose auto, torch or off)"
        )
    if mode == "off" or what != "pooled":
        return None
    offered = runtimes(encoder)
    if mode in ("onnxruntime", "torch"):
        if mode not in offered:
            log.info("%s does not run in %s; encoding eagerly", getattr(encoder, "name", "encoder"), mode)
            return None
        return mode
    if not offered:
        return None
    best = offered[0]
    return best if mode == "on" or n_items >= AUTO_ITEMS[best] else None


def _switch_on(encoder: Encoder, runtime: str) -> None:
    if hasattr(encoder, "runtimes"):
        encoder.set_compiled(True, runtime=runtime)
    else:
        encoder.set_compiled(True)  # encoders that only know torch.compile take no runtime


class OnnxModule:
    """A torch module exported to ONNX and run in ONNX Runtime on the CPU: called with tensors,
    returns tensors (its first output). Threads follow ``torch.get_num_threads()``.

    ``int8`` quantizes the weights of its matrix products to 8 bits per output channel, with
    activations quantized per batch (ONNX Runtime's dynamic quantization). Weights use 7 bits of
    range, the setting ONNX Runtime gives for CPUs without VNNI, so that the integer products cannot
    saturate and the result does not depend on which instructions the CPU has."""

    def __init__(
        self,
        module: torch.nn.Module,
        example: tuple[torch.Tensor, ...],
        names: list[str],
        dynamic: dict[str, dict[int, str]],
        int8: bool = False,
    ) -> None:
        import onnxruntime

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                example,
                buffer,  # type: ignore[arg-type]  # it writes to a file object as well as to a path
                input_names=names,
                output_names=["out"],
                dynamic_axes=dynamic,
                dynamo=False,
            )
        model = _quantized(buffer.getvalue()) if int8 else buffer.getvalue()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.names = names
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {n: x.detach().cpu().contiguous().numpy() for n, x in zip(self.names, inputs)}
        return torch.from_numpy(self.session.run(None, feed)[0])


def _quantized(model: bytes) -> bytes:
    """``model`` with int8 weights (per channel, 7-bit range) and dynamically quantized activations."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        prepared, out = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(
                onnx.load_from_string(model), prepared, skip_symbolic_shape=True
            )  # graph fused and shapes inferred first, as ONNX Runtime advises
            quantize_dynamic(prepared, out, per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
        return out.read_bytes()


class Accelerator:
    """Runs ``compute`` on batches eagerly, or compiled once the first batch agrees with eager."""

    def __init__(self, encoder: Encoder, what: str, n_items: int, mode: str, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.runtime = choose_runtime(encoder, what, n_items, mode)
        self.enabled = self.runtime is not None
        if not self.enabled and hasattr(encoder, "set_compiled"):
            encoder.set_compiled(False)  # an earlier pass may have left it compiled
        self.verified = False
        self.max_difference: float | None = None

    def _padded(
        self, compute: Callable[[list[Any]], dict[str, torch.Tensor]], values: list[Any]
    ) -> dict[str, torch.Tensor]:
        if self.runtime != "torch":  # ONNX Runtime takes any batch size
            return compute(values)
        n = len(values)
        padded = values + [values[-1]] * (self.batch_size - n) if n < self.batch_size else values
        return {f: t[:n] for f, t in compute(padded).items()}

    def run(
        self, compute: Callable[[list[Any]], dict[str, torch.Tensor]], values: list[Any]
    ) -> dict[str, torch.Tensor]:
        if self.runtime is None:
            return compute(values)
        if self.verified:
            return self._padded(compute, values)
        eager = compute(values)
        try:
            _switch_on(self.encoder, self.runtime)
            compiled = self._padded(compute, values)
            self.max_difference = max(float((compiled[f].float() - eager[f].float()).abs().max()) for f in eager)
        except Exception as exc:  # a backend that cannot compile this model: stay eager
            log.warning(
                "compiled inference (%s) failed for %s (%s: %s); encoding eagerly",
                self.runtime,
                getattr(self.encoder, "name", "encoder"),
                type(exc).__name__,
                exc,
            )
            self.max_difference = None
        if self.max_difference is None or self.max_difference > TOLERANCE:
            if self.max_difference is not None:
                log.warning(
                    "%s in %s differs from eager by %.2e > %.0e; encoding eagerly",
                    getattr(self.encoder, "name", "encoder"),
                    self.runtime,
                    self.max_difference,
                    TOLERANCE,
                )
            self.encoder.set_compiled(False)
            self.enabled = False
        self.verified = True
        return eager
