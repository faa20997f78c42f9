"""What ``itm plugins check NAME`` builds the built-in components with when the user gives no options.

A component registers ``check_options``: a dict, or a function of a scratch folder returning one.
Components whose defaults need something that a fresh machine does not have (a hub checkpoint, a
registered champion, a manifest file) get a small local stand-in made in that folder: tiny
randomly initialised hub models saved with ``save_pretrained``, a matcher or generator built from
the classic encoders and saved to a folder, a manifest of a few ``shapes`` images. The checks then
exercise the component's own code offline, without touching MLflow or the network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

CAPTIONS = [
    "a red circle on the left",
    "a blue square on the right",
    "a small green triangle",
    "a large yellow star in the middle",
]


def hub(builder: str, **extra: Any) -> Callable[[Path], dict[str, Any]]:
    """Options naming a tiny model of the same architecture, built by :mod:`plugins.tiny_hub`."""

    def options(folder: Path) -> dict[str, Any]:
        from plugins import tiny_hub

        return {"model": str(getattr(tiny_hub, builder)(folder / builder)), **extra}

    return options


def _classic_encoders() -> tuple[Any, Any]:
    from itm_core import create

    image = create("encoder", "color-histogram", bins=2, grid=1)
    text = create("encoder", "tfidf", max_features=64)
    text.fit(CAPTIONS)
    return image, text


def matcher_folder(folder: Path) -> str:
    """An untrained matcher over the classic towers, saved like a trained one."""
    import torch

    from itm_core.models.matcher import Matcher

    image, text = _classic_encoders()
    torch.manual_seed(0)
    matcher = Matcher(
        {"name": "color-histogram", "options": {"bins": 2, "grid": 1}},
        {"name": "tfidf", "options": {"max_features": 64}},
        int(image.dim),
        int(text.dim),
        embed_dim=16,
        hidden_dim=0,
    )
    return str(matcher.attach_encoders(image, text).save(folder / "matcher"))


def with_matcher(**extra: Any) -> Callable[[Path], dict[str, Any]]:
    return lambda folder: {"matcher": matcher_folder(folder), **extra}


def captioner_folder(folder: Path) -> dict[str, Any]:
    import torch

    from itm_core.models.captioning import Captioner, CaptioningOptions, CaptionModel, train_tokenizer

    image, _ = _classic_encoders()
    tokenizer = train_tokenizer(CAPTIONS)
    torch.manual_seed(0)
    model = CaptionModel(
        int(image.dim),
        tokenizer.get_vocab_size(),
        CaptioningOptions(prefix_tokens=2, n_embd=16, n_layer=1, n_head=2, max_length=8),
    )
    captioner = Captioner(model, tokenizer, {"name": "color-histogram", "options": {"bins": 2, "grid": 1}}, image)
    return {"model": str(captioner.save(folder / "captioner")), "num_beams": 2}


def text_to_image_folder(folder: Path) -> dict[str, Any]:
    import torch

    from itm_core.models.text_to_image import ConditionalVAE, CVAEOptions, TextToImage

    _, text = _classic_encoders()
    torch.manual_seed(0)
    model = ConditionalVAE(int(text.dim), CVAEOptions(resolution=16, cond_dim=8, latent_dim=4, channels=8))
    t2i = TextToImage(model, {"name": "tfidf", "options": {"max_features": 64}}, int(text.dim), False, text)
    return {"model": str(t2i.save(folder / "text-to-image"))}


def _shapes(folder: Path) -> Any:
    from itm_core import create

    return create(
        "dataset", "shapes", n_train=8, n_val=4, n_test=4, seed=0, image_size=32, root=str(folder / "shapes")
    ).load()


def manifest_options(folder: Path) -> dict[str, Any]:
    """A CSV manifest (image, caption, split) over a few ``shapes`` images."""
    import pandas as pd

    data = _shapes(folder)
    rows = [
        {"image": data.images[i], "caption": c, "split": data.image_split[i]}
        for i, caps in enumerate(data.captions_by_image())
        for c in caps[:2]
    ]
    path = Path(data.root) / "pairs.csv"  # image paths are relative to the manifest's folder
    pd.DataFrame(rows).to_csv(path, index=False)
    return {"path": str(path)}


def webdataset_options(folder: Path) -> dict[str, Any]:
    """Two WebDataset shards packed from a few ``shapes`` images."""
    from itm_core.data.webdataset import pack

    shards = pack(_shapes(folder), folder / "shards", shard_size=8)
    return {"urls": [str(s) for s in shards]}
