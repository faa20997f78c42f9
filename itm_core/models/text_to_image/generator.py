"""A trained text-to-image model with its text encoder (prompts in, images out), saved and loaded as a
folder, and the checks every prompt passes."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from itm_core.contract.components import Encoder
from itm_core.data import DataError
from itm_core.errors import ParamsError
from itm_core.models.saving import load_weights, read_meta, restore_encoder, save_model_folder
from itm_core.models.text_to_image.base import CONFIG_FILE, TextToImageBase, TextToImageModel, tensor_to_images
from itm_core.models.text_to_image.cvae import CVAEOptions
from itm_core.models.text_to_image.families import MODELS, saved_options
from itm_core.models.text_to_image.gan import GANOptions

MAX_PROMPT_CHARS = 1000


def check_prompts(prompts: Sequence[Any], limit: int = MAX_PROMPT_CHARS) -> list[str]:
    """Fail on a prompt that is not text, is empty or is longer than ``limit`` characters (naming it);
    return notes on prompts that have letters but none in the Latin script, which the built-in text
    encoders (trained on English) read as unknown words."""
    foreign = []
    for n, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DataError(f"prompt {n} is {type(prompt).__name__} {prompt!r}, not text")
        if not prompt.strip():
            raise DataError(f"prompt {n} is empty; describe the image, for example 'a small red circle on the left'")
        if len(prompt) > limit:
            raise DataError(
                f"prompt {n} has {len(prompt)} characters; at most {limit} are accepted "
                "(the text encoder reads far fewer)"
            )
        letters = [c for c in prompt if c.isalpha()]
        if letters and not any(unicodedata.name(c, "").startswith("LATIN") for c in letters):
            foreign.append(n)
    if not foreign:
        return []
    shown = ", ".join(map(str, foreign[:10])) + (" ..." if len(foreign) > 10 else "")
    return [
        f"{len(foreign)} prompt(s) ({shown}) have no letters in the Latin script; "
        "an English text encoder reads them as unknown words"
    ]


class TextToImage:
    """A trained model with its text encoder: prompts in, PIL images out (the same seed, the same images)."""

    def __init__(
        self,
        model: TextToImageModel,
        text_encoder_spec: dict[str, Any],
        text_dim: int,
        tokens: bool,
        encoder: Encoder | None = None,
    ) -> None:
        self.model = model.eval()
        self.text_encoder_spec = text_encoder_spec
        self.text_dim = text_dim
        self.tokens = tokens
        self.encoder = encoder

    @property
    def config(self) -> TextToImageBase:
        return self.model.config

    def text_features(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.encoder is None:
            raise RuntimeError("this model has no text encoder attached; use TextToImage.load")
        with torch.inference_mode():
            if self.tokens:
                tok, mask = self.encoder.encode_tokens(list(prompts))
                return tok.float(), mask.bool()
            return self.encoder.encode(list(prompts)).float(), None

    def generate_from_features(
        self, text: torch.Tensor, mask: torch.Tensor | None, seed: int = 0, batch_size: int = 64
    ) -> torch.Tensor:
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        parts = [
            self.model.sample(text[s : s + batch_size], None if mask is None else mask[s : s + batch_size], generator)
            for s in range(0, len(text), batch_size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, 3, self.config.resolution, self.config.resolution)

    def with_temperature(self, temperature: float) -> TextToImage:
        """The cvae or GAN sampling its noise at ``temperature`` times its deviation from now on (below 1:
        less variety, closer to what the prompt most often looks like; 0: the prior's mean)."""
        if not isinstance(self.config, CVAEOptions | GANOptions):
            raise ParamsError(
                f"temperature: only the cvae and the gan sample with a temperature; this model is a {self.config.model}"
            )
        if not temperature >= 0:
            raise ParamsError(f"temperature must be 0 or more, got {temperature!r}")
        self.model.config = self.config.model_copy(update={"temperature": float(temperature)})
        return self

    def generate(self, prompts: Sequence[str], seed: int = 0) -> list[Any]:
        """One image per prompt; an empty, non-text or over-long prompt raises :class:`DataError` naming it."""
        if len(prompts) == 0:
            return []
        check_prompts(prompts)
        text, mask = self.text_features(prompts)
        return tensor_to_images(self.generate_from_features(text, mask, seed))

    def save(self, folder: str | Path) -> Path:
        meta = {
            "kind": "text-to-image",
            "config": self.config.model_dump(),
            "text_encoder": self.text_encoder_spec,
            "text_dim": self.text_dim,
            "tokens": self.tokens,
        }
        return save_model_folder(folder, CONFIG_FILE, meta, self.model, self.encoder, "text_encoder")

    @classmethod
    def load(cls, folder: str | Path) -> TextToImage:
        meta = read_meta(folder, CONFIG_FILE, "text-to-image model")
        config = saved_options(meta["config"])
        model = load_weights(folder, MODELS[config.model](meta["text_dim"], config))
        return cls(
            model,
            meta["text_encoder"],
            meta["text_dim"],
            meta["tokens"],
            restore_encoder(folder, meta["text_encoder"], "text_encoder"),
        )
