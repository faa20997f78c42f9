"""The folder format shared by trained generators: a JSON configuration, the torch weights and the
fitted state of the encoder the model reads features from."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

WEIGHTS_FILE = "weights.pt"


def save_model_folder(folder: str | Path, config_file: str, meta: dict[str, Any], module: torch.nn.Module, encoder: Any, role: str) -> Path:
    """Write ``meta`` as ``config_file``, the weights of ``module`` and ``encoder``'s fitted state (as ``<role>_state.pkl``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_file).write_text(json.dumps(meta, indent=2, default=str))
    torch.save(module.state_dict(), folder / WEIGHTS_FILE)
    state = encoder.get_state() if encoder is not None and hasattr(encoder, "get_state") else None
    if state is not None:
        (folder / f"{role}_state.pkl").write_bytes(pickle.dumps(state))
    return folder


def read_meta(folder: str | Path, config_file: str, what: str) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / config_file).is_file():
        raise FileNotFoundError(f"{folder} is not a saved {what} (no {config_file})")
    return json.loads((folder / config_file).read_text())


def load_weights(folder: str | Path, module: torch.nn.Module) -> torch.nn.Module:
    module.load_state_dict(torch.load(Path(folder) / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return module.eval()


def restore_encoder(folder: str | Path, spec: dict[str, Any], role: str) -> Any:
    """The encoder ``spec`` names, created from the registry with its saved fitted state."""
    from itm_core.contract.registry import create

    encoder = create("encoder", spec["name"], **spec.get("options", {}))
    state_file = Path(folder) / f"{role}_state.pkl"
    if state_file.is_file():
        encoder.set_state(pickle.loads(state_file.read_bytes()))
    return encoder
