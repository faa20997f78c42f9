"""A captioner trained from scratch: image-encoder features as a prefix to a small GPT-2 decoder.

The image features (from any image encoder plugin, cached like every other feature) are standardised
and projected to ``prefix_tokens`` embeddings; the decoder is a transformers ``GPT2LMHeadModel`` built
from a configuration (no pretrained weights) and the vocabulary is a word-level tokenizer trained on
the training captions with the ``tokenizers`` library. Decoding is transformers' own ``generate``
(greedy or beam search) on the prefix.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from itm_core.models.saving import load_weights, read_meta, restore_encoder, save_model_folder
from itm_core.models.training import TrainSchedule, clipped_step, one_cycle, seed_everything

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
CONFIG_FILE, TOKENIZER_FILE = "captioner.json", "tokenizer.json"


def train_tokenizer(captions: Sequence[str], min_frequency: int = 1) -> Any:
    """A lower-casing word-level ``tokenizers.Tokenizer`` whose vocabulary is the training captions' words."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if not captions:
        raise ValueError("cannot train a caption tokenizer on no captions")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # words keep their hyphens and punctuation
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, BOS, EOS, UNK], min_frequency=min_frequency)
    tokenizer.train_from_iterator(list(captions), trainer=trainer)
    return tokenizer


@dataclass
class CaptionerConfig(TrainSchedule):
    """The decoder's shape and the training schedule."""

    epochs: int = 12
    weight_decay: float = 0.01
    prefix_tokens: int = 4
    n_embd: int = 256
    n_layer: int = 3
    n_head: int = 4
    dropout: float = 0.1
    max_length: int = 24
    patience: int = 4


class CaptionModel(nn.Module):
    """Feature prefix + GPT-2. ``vocab_size`` and the special token ids come from the tokenizer."""

    def __init__(self, feature_dim: int, vocab_size: int, config: CaptionerConfig) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
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

    def set_statistics(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.float().mean(0))
        self.std.copy_(features.float().std(0).clamp_min(1e-4))

    def prefix_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, prefix_tokens + 1, n_embd)``: the projected features followed by the BOS embedding."""
        x = (features.float() - self.mean) / self.std
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
        self, model: CaptionModel, tokenizer: Any, image_encoder: dict[str, Any], encoder: Any | None = None
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.encoder = encoder

    def encode_ids(self, captions: Sequence[str]) -> torch.Tensor:
        """Caption token ids ending with EOS, truncated to ``max_length`` and padded with 0."""
        limit = self.model.config.max_length
        rows = [self.tokenizer.encode(c).ids[: limit - 1] + [2] for c in captions]
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
            "config": asdict(self.model.config),
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
            folder, CaptionModel(meta["feature_dim"], tokenizer.get_vocab_size(), CaptionerConfig(**meta["config"]))
        )
        return cls(
            model, tokenizer, meta["image_encoder"], restore_encoder(folder, meta["image_encoder"], "image_encoder")
        )


@dataclass
class CaptionTrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    seconds: float = 0.0
    stopped: str = "epochs"


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


def train_captioner(
    image_encoder: dict[str, Any],
    train_features: torch.Tensor,
    train_captions: Sequence[str],
    train_caption_image: Sequence[int],
    val_features: torch.Tensor,
    val_captions: Sequence[str],
    val_caption_image: Sequence[int],
    config: CaptionerConfig,
    on_epoch: Callable[[int, dict[str, float], Captioner], None] | None = None,
) -> tuple[Captioner, CaptionTrainResult]:
    """Train on every (image, caption) pair each epoch; keep the weights with the lowest validation loss.

    ``time_limit_s`` (when above 0) ends training after the epoch that passes it."""
    seed_everything(config.seed)
    start = time.perf_counter()
    tokenizer = train_tokenizer(train_captions)
    model = CaptionModel(train_features.shape[1], tokenizer.get_vocab_size(), config)
    model.set_statistics(train_features)
    captioner = Captioner(model, tokenizer, image_encoder)
    ids = captioner.encode_ids(train_captions)
    owners = torch.as_tensor(list(train_caption_image), dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, -(-len(ids) // config.batch_size))
    scheduler = one_cycle(optimizer, config.lr, config.epochs * steps_per_epoch, 0.1)
    rng = random.Random(config.seed)
    result = CaptionTrainResult()
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = list(range(len(ids)))
        rng.shuffle(order)
        losses = []
        for b in range(steps_per_epoch):
            rows = torch.tensor(order[b * config.batch_size : (b + 1) * config.batch_size])
            if len(rows) == 0:
                continue
            batch_ids = ids[rows]
            batch_ids = batch_ids[:, : int((batch_ids != 0).sum(1).max())]
            losses.append(
                clipped_step(model.loss(train_features[owners[rows]], batch_ids), model, optimizer, scheduler)
            )
        metrics = {
            "train_loss": float(np.mean(losses)),
            "val_loss": caption_loss(captioner, val_features, val_captions, val_caption_image),
        }
        result.history.append({"epoch": epoch, **metrics})
        if on_epoch is not None:
            on_epoch(epoch, metrics, captioner)
        if metrics["val_loss"] < result.best_val_loss:
            result.best_val_loss, result.best_epoch, stale = metrics["val_loss"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                result.stopped = "patience"
                break
        if config.time_limit_s and time.perf_counter() - start > config.time_limit_s:
            result.stopped = "time limit"
            break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return captioner, result
