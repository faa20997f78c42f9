"""A captioner trained from scratch: image-encoder features as a prefix to a small GPT-2 decoder.

The image features (from any image encoder plugin, cached like every other feature) are standardised
and projected to ``prefix_tokens`` embeddings; the decoder is a transformers ``GPT2LMHeadModel`` built
from a configuration (no pretrained weights) and the vocabulary is a word-level tokenizer trained on
the training captions with the ``tokenizers`` library. Decoding is transformers' own ``generate``
(greedy or beam search) on the prefix.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from itm_core.contract.components import Encoder
from itm_core.contract.params import Params
from itm_core.errors import DataError
from itm_core.models.loop import (
    FitResult,
    Trainer,
    adamw,
    clipped_step,
    fit,
    one_cycle,
    seed_everything,
    settle_precision,
    step_autocast,
)
from itm_core.models.saving import load_weights, read_meta, restore_encoder, save_model_folder
from itm_core.models.standardize import Standardizer

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
CONFIG_FILE, TOKENIZER_FILE = "captioner.json", "tokenizer.json"


def train_tokenizer(captions: Sequence[str], min_frequency: int = 1) -> Any:
    """A lower-casing word-level ``tokenizers.Tokenizer`` whose vocabulary is the training captions' words."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if not captions:
        raise DataError("cannot train a caption tokenizer on no captions")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # words keep their hyphens and punctuation
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, BOS, EOS, UNK], min_frequency=min_frequency)
    tokenizer.train_from_iterator(list(captions), trainer=trainer)
    return tokenizer


class CaptioningOptions(Params):
    """The trained captioner: image-encoder features as a prefix to a small GPT-2 decoder trained from
    scratch; the decoder's shape, its training and how it captions."""

    prefix_tokens: int = Field(4, ge=1, description="Decoder input embeddings the image features are projected to")
    n_embd: int = Field(256, ge=8, description="GPT-2 width")
    n_layer: int = Field(3, ge=1, description="GPT-2 layers")
    n_head: int = Field(4, ge=1, description="GPT-2 attention heads (must divide n_embd)")
    dropout: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(24, ge=2, description="Longest caption in tokens (longer ones are cut in training)")
    epochs: int = Field(12, ge=1, description="Maximum epochs (each pass sees every caption)")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (one-cycle schedule)")
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(3, ge=1, description="Stop after this many epochs without a lower validation loss")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32",
        description="bf16: training steps' forward passes run under bfloat16 autocast (validation stays float32); "
        "auto: bf16 on a CPU with AVX512-BF16 or AMX, fp32 elsewhere",
    )
    num_beams: int = Field(3, ge=1, description="Beam width for the test captions and the registered model (1: greedy)")
    sample_every: int = Field(2, ge=1, description="Log captions of fixed validation images every this many epochs")
    time_limit_s: float = Field(
        840, ge=0, description="End training after the epoch that passes this many seconds (0: no limit)"
    )
    seed: int = Field(0)

    @model_validator(mode="after")
    def _heads_divide(self) -> CaptioningOptions:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        return self


def saved_options(config: dict[str, Any]) -> CaptioningOptions:
    """The options a captioner was saved with (keys that are no longer options are left out)."""
    return CaptioningOptions.model_validate({k: v for k, v in config.items() if k in CaptioningOptions.model_fields})


class CaptionModel(Standardizer):
    """Feature prefix + GPT-2. ``vocab_size`` and the special token ids come from the tokenizer."""

    def __init__(self, feature_dim: int, vocab_size: int, config: CaptioningOptions) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        super().__init__(feature_dim, min_std=1e-4)
        self.config = config
        self.feature_dim = feature_dim
        self.prefix = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(feature_dim, config.prefix_tokens * config.n_embd)
        )
        gpt_config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=config.prefix_tokens + config.max_length + 2,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        self.gpt = GPT2LMHeadModel(gpt_config)

    def prefix_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, prefix_tokens + 1, n_embd)``: the projected features followed by the BOS embedding."""
        x = self.standardize(features.float())
        prefix = self.prefix(x).view(len(x), self.config.prefix_tokens, self.config.n_embd)
        bos = self.gpt.transformer.wte(torch.full((len(x), 1), 1, dtype=torch.long, device=x.device))
        return torch.cat([prefix, bos], dim=1)

    def loss(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of the captions ``ids`` (padded with 0, ending with EOS) given the prefix."""
        prefix = self.prefix_embeddings(features)
        embeds = torch.cat([prefix, self.gpt.transformer.wte(ids)], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=ids.device), (ids != 0).long()], dim=1)
        ignore = torch.full((len(ids), prefix.shape[1]), -100, dtype=torch.long, device=ids.device)
        labels = torch.cat([ignore, ids.masked_fill(ids == 0, -100)], dim=1)
        return self.gpt(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    @torch.no_grad()
    def generate_ids(
        self, features: torch.Tensor, num_beams: int = 1, max_new_tokens: int | None = None
    ) -> torch.Tensor:
        self.eval()
        prefix = self.prefix_embeddings(features)
        return self.gpt.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device),
            max_new_tokens=max_new_tokens or self.config.max_length,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=0,
            bos_token_id=1,
        )


class Captioner:
    """A trained caption model with its tokenizer and image encoder: PIL images or features in, captions out."""

    def __init__(
        self, model: CaptionModel, tokenizer: Any, image_encoder: dict[str, Any], encoder: Encoder | None = None
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.encoder = encoder

    def encode_ids(self, captions: Sequence[str]) -> torch.Tensor:
        """Caption token ids ending with EOS, truncated to ``max_length`` and padded with 0."""
        limit = self.model.config.max_length
        rows = [[*self.tokenizer.encode(c).ids[: limit - 1], 2] for c in captions]
        out = torch.zeros(len(rows), max(map(len, rows), default=1), dtype=torch.long)
        for n, r in enumerate(rows):
            out[n, : len(r)] = torch.tensor(r)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row.tolist(), skip_special_tokens=True).strip() for row in ids]

    def caption_features(self, features: torch.Tensor, num_beams: int = 1, batch_size: int = 128) -> list[str]:
        out: list[str] = []
        for start in range(0, len(features), batch_size):
            out += self.decode(self.model.generate_ids(features[start : start + batch_size], num_beams=num_beams))
        return out

    def caption_images(self, images: Sequence[Any], num_beams: int = 1) -> list[str]:
        if len(images) == 0:
            return []
        if self.encoder is None:
            raise RuntimeError("this captioner has no image encoder attached; use Captioner.load")
        with torch.inference_mode():
            features = self.encoder.encode(list(images)).float()
        return self.caption_features(features, num_beams)

    def save(self, folder: str | Path) -> Path:
        meta = {
            "kind": "captioner",
            "feature_dim": self.model.feature_dim,
            "config": self.model.config.model_dump(),
            "image_encoder": self.image_encoder,
        }
        folder = save_model_folder(folder, CONFIG_FILE, meta, self.model, self.encoder, "image_encoder")
        self.tokenizer.save(str(folder / TOKENIZER_FILE))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Captioner:
        from tokenizers import Tokenizer

        meta = read_meta(folder, CONFIG_FILE, "captioner")
        tokenizer = Tokenizer.from_file(str(Path(folder) / TOKENIZER_FILE))
        model = load_weights(
            folder, CaptionModel(meta["feature_dim"], tokenizer.get_vocab_size(), saved_options(meta["config"]))
        )
        return cls(
            model, tokenizer, meta["image_encoder"], restore_encoder(folder, meta["image_encoder"], "image_encoder")
        )


@torch.no_grad()
def caption_loss(
    captioner: Captioner,
    features: torch.Tensor,
    captions: Sequence[str],
    caption_image: Sequence[int],
    batch_size: int = 256,
) -> float:
    """Mean next-token loss over every (image, caption) pair."""
    captioner.model.eval()
    losses, weights = [], []
    for start in range(0, len(captions), batch_size):
        rows = list(caption_image[start : start + batch_size])
        ids = captioner.encode_ids(captions[start : start + batch_size])
        losses.append(captioner.model.loss(features[rows], ids).item())
        weights.append(len(rows))
    return float(np.average(losses, weights=weights)) if losses else float("nan")


class CaptionerTrainer(Trainer):
    """Every (image, caption) pair once an epoch, next-token loss, AdamW under a one-cycle schedule."""

    def __init__(
        self,
        captioner: Captioner,
        features: torch.Tensor,
        captions: Sequence[str],
        caption_image: Sequence[int],
        val: tuple[torch.Tensor, Sequence[str], Sequence[int]],
        options: CaptioningOptions,
    ) -> None:
        self.captioner, self.model, self.features, self.val, self.options = (
            captioner,
            captioner.model,
            features,
            val,
            options,
        )
        self.autocast = step_autocast(settle_precision(options.precision))
        self.ids = captioner.encode_ids(captions)
        self.owners = torch.as_tensor(list(caption_image), dtype=torch.long)
        self.optimizer = adamw(self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.steps_per_epoch = max(1, -(-len(self.ids) // options.batch_size))
        self.scheduler = one_cycle(self.optimizer, options.lr, options.epochs * self.steps_per_epoch, 0.1)
        self.rng = random.Random(options.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.options.batch_size
        order = list(range(len(self.ids)))
        self.rng.shuffle(order)
        for b in range(self.steps_per_epoch):
            rows = torch.tensor(order[b * size : (b + 1) * size])
            if len(rows) == 0:
                continue
            ids = self.ids[rows]
            yield self.features[self.owners[rows]], ids[:, : int((ids != 0).sum(1).max())]

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        with self.autocast:
            loss = self.model.loss(*batch)
        return clipped_step(loss, self.model, self.optimizer, self.scheduler)

    def validate(self) -> dict[str, float]:
        return {"val_loss": caption_loss(self.captioner, *self.val)}


def train_captioner(
    image_encoder: dict[str, Any],
    train_features: torch.Tensor,
    train_captions: Sequence[str],
    train_caption_image: Sequence[int],
    val_features: torch.Tensor,
    val_captions: Sequence[str],
    val_caption_image: Sequence[int],
    options: CaptioningOptions,
    on_epoch: Callable[[int, dict[str, float], Captioner], None] | None = None,
) -> tuple[Captioner, FitResult]:
    """Train on every (image, caption) pair each epoch; keep the weights with the lowest validation
    loss (``result.best_value``). ``time_limit_s`` (when above 0) ends training after the epoch that passes it."""
    seed_everything(options.seed)
    tokenizer = train_tokenizer(train_captions)
    model = CaptionModel(train_features.shape[1], tokenizer.get_vocab_size(), options)
    model.set_statistics(train_features.float())
    captioner = Captioner(model, tokenizer, image_encoder)
    trainer = CaptionerTrainer(
        captioner,
        train_features,
        train_captions,
        train_caption_image,
        (val_features, val_captions, val_caption_image),
        options,
    )
    result = fit(
        trainer,
        epochs=options.epochs,
        patience=options.patience,
        time_limit_s=options.time_limit_s,
        monitor="val_loss",
        mode="min",
        on_epoch=(lambda epoch, metrics: on_epoch(epoch, metrics, captioner)) if on_epoch else None,
        desc="captioner",
    )
    return captioner, result
