"""What the hub-model plugins share: the options every ``from_pretrained`` takes, and tensor helpers.

``model`` is a hub id (``openai/clip-vit-base-patch32``) or a local folder made by
``save_pretrained``; with ``HF_HUB_OFFLINE=1`` only local folders and the local cache are used.
"""

from __future__ import annotations

from typing import Any

from itm_core.errors import ModelError

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def check_model_reference(model: str, option: str = "model") -> None:
    """A ``model`` that can only be a folder (absolute, ``./``, ``../``, ``~``, or more than one ``/``)
    must exist: hub ids are ``name`` or ``namespace/name``, so the library's own error would be about
    the id's form, not the missing folder."""
    from pathlib import Path

    text = str(model)
    looks_like_path = text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
    path = Path(text).expanduser()
    if looks_like_path and not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ModelError(
            f"{option}={text!r}: the folder {what}. Give a folder made by save_pretrained "
            "(config.json and the weights inside) or a hub id such as 'openai/clip-vit-base-patch32'"
        )


def load_pretrained(cls: Any, model: str, revision: str | None, dtype: str, device: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` in eval mode on ``device``; a failure names the model and how to fix it."""
    check_model_reference(model)
    try:
        loaded = cls.from_pretrained(model, revision=revision, dtype=torch_dtype(dtype), **kwargs)
    except OSError as exc:
        raise OSError(
            f"cannot load {cls.__name__} from {model!r}: {exc}. Pass a local folder made by save_pretrained, "
            "or a hub id with network access (HF_HUB_OFFLINE=1 allows only the local cache)"
        ) from None
    return loaded.eval().to(device)


def load_processor(cls: Any, model: str, revision: str | None) -> Any:
    check_model_reference(model)
    try:
        return cls.from_pretrained(model, revision=revision)
    except OSError as exc:
        raise OSError(f"cannot load {cls.__name__} from {model!r}: {exc}") from None


def features(output: Any) -> Any:
    """Projected features from ``get_*_features``: a tensor in older transformers, an output with
    ``pooler_output`` in newer."""
    return output if hasattr(output, "shape") else output.pooler_output


def rgb(images: Any) -> list[Any]:
    return [img.convert("RGB") for img in images]


HUB_METADATA = {"requires": ["transformers"], "hub": True}
