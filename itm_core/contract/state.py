"""Fitted encoder state and model weights on disk, as data only.

An encoder's ``get_state()`` returns plain data: dicts (string keys), lists, strings, numbers,
booleans, ``None``, numpy arrays and torch tensors. :func:`save_state` writes the arrays to a
safetensors file and the rest to JSON; :func:`load_state` reads them back. Nothing is unpickled,
so loading a saved model never runs code from its files. A state in an older format (a pickle)
is refused with the version that wrote it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itm_core.errors import ModelError

FORMAT = 2  # 1: pickled encoder states and torch.save weights (itm-workbench 0.1)
_ARRAY = "__array__"


class StateFormatError(ModelError, ValueError):
    """A state that is not plain data, or a file in a format this version does not read."""


def _split(value: Any, arrays: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise StateFormatError(f"encoder state at {path or 'the top'}: dict keys must be strings")
        return {k: _split(v, arrays, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        key = f"a{len(arrays)}"
        if isinstance(value, np.ndarray):
            kind, arrays[key] = "numpy", torch.from_numpy(np.ascontiguousarray(value))
        else:
            kind, arrays[key] = "torch", value.detach().cpu().contiguous()
        return {_ARRAY: key, "kind": kind}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise StateFormatError(
        f"encoder state at {path or 'the top'}: {type(value).__name__} is not plain data "
        "(use dicts, lists, strings, numbers, numpy arrays or tensors)"
    )


def _join(value: Any, arrays: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            tensor = arrays[value[_ARRAY]]
            return tensor.numpy() if value.get("kind") == "numpy" else tensor
        return {k: _join(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, arrays) for v in value]
    return value


def save_state(state: Any, folder: str | Path, stem: str) -> None:
    """``<stem>.json`` (structure) and ``<stem>.safetensors`` (arrays) in ``folder``."""
    from safetensors.torch import save_file

    arrays: dict[str, torch.Tensor] = {}
    structure = _split(state, arrays, "")
    folder = Path(folder)
    (folder / f"{stem}.json").write_text(json.dumps({"format": FORMAT, "state": structure}))
    save_file(arrays, str(folder / f"{stem}.safetensors"))


def load_state(folder: str | Path, stem: str) -> Any:
    """The state :func:`save_state` wrote, or ``None`` when there is none."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / f"{stem}.pkl").is_file() and not (folder / f"{stem}.json").is_file():
        raise StateFormatError(
            f"{folder / (stem + '.pkl')} was written by itm-workbench 0.1 (format 1, a pickle), which this version "
            "does not load: pickles can run code. Retrain the model, or re-save it with itm-workbench 0.1 and this "
            "version's format"
        )
    if not (folder / f"{stem}.json").is_file():
        return None
    doc = json.loads((folder / f"{stem}.json").read_text())
    arrays = load_file(str(folder / f"{stem}.safetensors")) if (folder / f"{stem}.safetensors").is_file() else {}
    return _join(doc["state"], arrays)


def check_format(meta: dict[str, Any], folder: str | Path, what: str) -> None:
    """A saved folder's configuration names its format (``itm_format``); one this version cannot
    read fails naming the version that wrote it."""
    written = int(meta.get("itm_format", 1))
    if written != FORMAT:
        who = "itm-workbench 0.1" if written == 1 else f"a newer itm-workbench (format {written})"
        raise StateFormatError(
            f"{folder} is a {what} saved by {who}; this version reads format {FORMAT}: retrain it with this version"
        )


def state_digest(state: Any) -> str | None:
    """A hash of a state's content (structure and array bytes), for cache keys."""
    if state is None:
        return None
    arrays: dict[str, torch.Tensor] = {}
    structure = _split(state, arrays, "")
    h = hashlib.sha256(json.dumps(structure, sort_keys=True).encode())
    for key in sorted(arrays):
        t = arrays[key]
        h.update(f"{key}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(module: torch.nn.Module, path: str | Path) -> None:
    """A module's weights as safetensors (shared tensors, such as tied embeddings, stored once)."""
    from safetensors.torch import save_model

    save_model(module, str(path))


def load_weights_into(module: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        legacy = path.with_suffix(".pt")
        if legacy.is_file():
            raise StateFormatError(
                f"{legacy} holds weights of itm-workbench 0.1 (format 1, torch.save); this version reads "
                f"{path.name} (safetensors). Retrain the model with this version"
            )
        raise ModelError(f"no weights file {path}")
    load_model(module, str(path), device="cpu")
    return module
