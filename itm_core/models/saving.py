"""The folder format shared by trained generators: a JSON configuration, the weights (safetensors)
and the fitted state of the encoder the model reads features from (JSON + safetensors, never a pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import torch

from itm_core.contract.components import Encoder
from itm_core.contract.state import FORMAT, check_format, load_state, load_weights_into, save_state, save_weights
from itm_core.errors import ModelError

WEIGHTS_FILE = "weights.safetensors"

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def save_model_folder(
    folder: str | Path,
    config_file: str,
    meta: dict[str, Any],
    module: torch.nn.Module,
    encoder: Encoder | None,
    role: str,
) -> Path:
    """Write ``meta`` as ``config_file``, the weights of ``module`` and ``encoder``'s fitted state
    (``<role>_state.json``/``.safetensors``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_file).write_text(json.dumps({**meta, "itm_format": FORMAT}, indent=2, default=str))
    save_weights(module, folder / WEIGHTS_FILE)
    state = encoder.get_state() if encoder is not None and hasattr(encoder, "get_state") else None
    if state is not None:
        save_state(state, folder, f"{role}_state")
    return folder


def read_meta(folder: str | Path, config_file: str, what: str) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / config_file).is_file():
        raise ModelError(f"{folder} is not a saved {what} (no {config_file})")
    meta = json.loads((folder / config_file).read_text())
    check_format(meta, folder, what)
    return meta


def load_weights(folder: str | Path, module: ModuleT) -> ModuleT:
    """``module`` with the weights saved in ``folder``, in evaluation mode."""
    load_weights_into(module, Path(folder) / WEIGHTS_FILE).eval()
    return module


def restore_encoder(folder: str | Path, spec: dict[str, Any], role: str) -> Any:
    """The encoder ``spec`` names, created from the registry with its saved fitted state."""
    from itm_core.contract.registry import create_encoder

    return create_encoder(spec, load_state(folder, f"{role}_state"))
