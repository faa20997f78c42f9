"""``vqvae``: a VQ-VAE (exponential-moving-average codebook, dead codes restarted) compresses images to
a grid of codes; then a transformer prior, cross-attending to the text tokens, predicts the codes one
by one (the DALL-E 1 route), sampled with top-k and classifier-free guidance.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from itm_core.models.loop import FitResult, adamw, clipped_step, one_cycle
from itm_core.models.text_to_image.base import (
    Precision,
    TextCondition,
    TextToImageBase,
    TextToImageModel,
    batch_size_field,
    channels_field,
    epochs_field,
    guidance_field,
    lr_field,
    precision_field,
)
from itm_core.models.text_to_image.trainer import T2ITrainer


class VQVAEOptions(TextToImageBase):
    """The VQ-VAE and its text-conditional prior: the codebook, the code grid, the two stages, sampling."""

    model: Literal["vqvae"] = "vqvae"
    epochs: int = epochs_field(60)
    batch_size: int = batch_size_field(64)
    lr: float = lr_field(1e-3)
    precision: Precision = precision_field("fp32")
    channels: int = channels_field(64)
    codebook_size: int = Field(128, ge=2, description="Number of codes")
    code_dim: int = Field(64, ge=2, description="Width of a code")
    code_stride: Literal[2, 4, 8] = Field(
        4, description="Each code stands for a code_stride x code_stride patch (32 px at 4: an 8x8 grid of codes)"
    )
    vq_epochs: int = Field(
        20, ge=1, description="Epochs of the auto-encoder before the prior (or a third of the time limit)"
    )
    prior_width: int = Field(256, ge=16, description="Transformer prior width")
    prior_layers: int = Field(4, ge=1, description="Transformer prior layers")
    prior_dropout: float = Field(0.2, ge=0, lt=1, description="Dropout in the transformer prior")
    top_k: int = Field(32, ge=0, description="Sample each code among the k most likely (0: all)")
    guidance_scale: float = guidance_field(2.0)

    @model_validator(mode="after")
    def _prior_trains(self) -> VQVAEOptions:
        if self.epochs <= self.vq_epochs:
            raise ValueError(
                f"vqvae: epochs ({self.epochs}) must be more than vq_epochs ({self.vq_epochs}), "
                "or the prior never trains"
            )
        return self


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, 1, 1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Codebook(nn.Module):
    """Vector quantisation with an exponential moving average codebook (VQ-VAE-2), started on encoder
    outputs of the first training batch; a code chosen on average less than once a step lately is
    restarted on a random encoder output of the batch (as Jukebox does)."""

    embed: torch.Tensor
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor
    initialised: torch.Tensor

    def __init__(self, size: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("embed", torch.randn(size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, D, H, W)`` encodings to ``(N, H, W)`` code indices."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.T + self.embed.pow(2).sum(1)
        return distance.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantised encodings (straight-through) and the commitment loss."""
        if self.training and not self.initialised:
            with torch.no_grad():
                flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                self.embed.copy_(flat[torch.randint(0, len(flat), (len(self.embed),))])
                self.embed_sum.copy_(self.embed)
                self.initialised.fill_(True)
        codes = self.codes(z)
        quantised = self.lookup(codes)
        if self.training:
            with torch.no_grad():
                flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                onehot = F.one_hot(codes.flatten(), len(self.embed)).type(flat.dtype)
                self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.embed_sum.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
                n = self.cluster_size.sum()
                size = (self.cluster_size + 1e-5) / (n + len(self.embed) * 1e-5) * n
                self.embed.copy_(self.embed_sum / size[:, None])
                dead = self.cluster_size < 1.0  # on average less than one encoding a step lately
                if dead.any():
                    pick = flat[torch.randint(0, len(flat), (int(dead.sum()),))]
                    self.embed[dead] = pick
                    self.embed_sum[dead] = pick
                    self.cluster_size[dead] = 1.0
        commitment = F.mse_loss(z, quantised.detach())
        return z + (quantised - z).detach(), commitment


class VQPrior(nn.Module):
    """A causal transformer over the code grid (a start token, then the codes in raster order) that
    cross-attends to the text tokens; a learned null text stands in for dropped conditions."""

    def __init__(self, codes: int, length: int, cond_dim: int, width: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(codes + 1, width)
        self.start = codes
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.memory = nn.Linear(cond_dim, width)
        self.null = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerDecoderLayer(
            width, max(1, width // 64), 4 * width, dropout=dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, codes)

    def logits(self, previous: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> torch.Tensor:
        """Next-code logits after each of ``previous`` (``(N, T)``, the start token first)."""
        t = previous.shape[1]
        x = self.tokens(previous) + self.position[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, dtype=x.dtype)
        h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_mask)
        return self.head(self.norm(h))


class VQVAE(TextToImageModel):
    """Stage one (``phase = "vq"``): the auto-encoder; stage two (``phase = "prior"``): the text-conditional
    prior. ``code_stride`` (2, 4 or 8) divides the resolution, a multiple of 8."""

    config: VQVAEOptions

    def __init__(self, text_dim: int, config: VQVAEOptions) -> None:
        super().__init__()
        r, ch, stride, self.config = config.resolution, config.channels, config.code_stride, config
        self.side = r // stride
        self.phase = "vq"
        self.condition = TextCondition(text_dim, config.cond_dim)
        widths = [ch] + [ch * 2] * (int(np.log2(stride)) - 1)  # per stride-2 level
        down: list[nn.Module] = [nn.Conv2d(3, widths[0], 4, 2, 1)]
        for a, b in itertools.pairwise(widths):
            down += [nn.ReLU(), nn.Conv2d(a, b, 4, 2, 1)]
        up: list[nn.Module] = []
        for a, b in zip(widths[:0:-1], widths[-2::-1]):
            up += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU()]
        up.append(nn.ConvTranspose2d(widths[0], 3, 4, 2, 1))
        ch = widths[-1]
        self.encoder = nn.Sequential(*down, _Residual(ch), _Residual(ch), nn.ReLU(), nn.Conv2d(ch, config.code_dim, 1))
        self.codebook = Codebook(config.codebook_size, config.code_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, ch, 3, 1, 1), _Residual(ch), _Residual(ch), nn.ReLU(), *up
        )
        self.prior = VQPrior(
            config.codebook_size,
            self.side * self.side,
            config.cond_dim,
            config.prior_width,
            config.prior_layers,
            config.prior_dropout,
        )

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def prior_parameters(self) -> list[nn.Parameter]:
        return [*self.prior.parameters(), *self.condition.parameters()]

    def _memory(self, text: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if text.dim() == 2:
            text, mask = text[:, None], None
        return self.prior.memory(self.condition(text)), None if mask is None else ~mask

    def training_loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.phase == "vq":
            quantised, commitment = self.codebook(self.encoder(images))
            return F.mse_loss(self.decoder(quantised), images) + 0.25 * commitment
        with torch.no_grad():
            codes = self.codebook.codes(self.encoder(images)).flatten(1)
        memory, memory_mask = self._memory(text, mask)
        if self.training:
            drop = torch.rand(len(images)) < 0.1
            memory = torch.where(drop[:, None, None], self.prior.null.expand_as(memory), memory)
            if memory_mask is not None:
                memory_mask = memory_mask & ~drop[:, None]
        previous = torch.cat([torch.full((len(codes), 1), self.prior.start), codes[:, :-1]], dim=1)
        return F.cross_entropy(self.prior.logits(previous, memory, memory_mask).flatten(0, 1), codes.flatten())

    @torch.no_grad()
    def sample(self, text: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        n, g, k = len(text), self.config.guidance_scale, self.config.top_k
        memory, memory_mask = self._memory(text, mask)
        null = self.prior.null.expand(n, memory.shape[1], -1)
        both = torch.cat([memory, null])
        both_mask = None if memory_mask is None else torch.cat([memory_mask, memory_mask])
        codes = torch.full((n, 1), self.prior.start)
        for _ in range(self.side * self.side):
            logits = self.prior.logits(torch.cat([codes, codes]), both, both_mask)[:, -1]
            cond, uncond = logits.chunk(2)
            logits = uncond + g * (cond - uncond) if g != 1 else cond
            if 0 < k < logits.shape[1]:
                floor = logits.topk(k, dim=1).values[:, -1:]
                logits = logits.masked_fill(logits < floor, float("-inf"))
            codes = torch.cat([codes, torch.multinomial(logits.softmax(1), 1, generator=generator)], dim=1)
        grid = codes[:, 1:].view(n, self.side, self.side)
        return self.decoder(self.codebook.lookup(grid)).clamp(-1, 1)


class VQTrainer(T2ITrainer):
    """``vq_epochs`` of the auto-encoder (or a third of ``time_limit_s``, whichever ends first), then the
    prior for the remaining epochs, each stage with its own optimiser and one-cycle schedule; the prior
    of the epoch with the lowest validation loss is kept (on a few thousand images it overfits)."""

    def __init__(self, model: VQVAE, options: VQVAEOptions, *data: Any) -> None:
        super().__init__(model, options, *data)
        self.vq, self.vq_options = model, options
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.optimizer = adamw(model.autoencoder_parameters(), lr=options.lr, weight_decay=0.0)
        self.scheduler = one_cycle(self.optimizer, options.lr, max(1, options.vq_epochs) * self.steps_per_epoch, 0.05)

    def start_epoch(self, epoch: int, elapsed: float) -> None:
        c = self.vq_options
        if self.vq.phase == "vq" and (epoch > c.vq_epochs or (c.time_limit_s and elapsed > c.time_limit_s / 3)):
            self.vq.phase = "prior"
            self.optimizer = adamw(self.vq.prior_parameters(), lr=c.lr, weight_decay=c.weight_decay)
            self.scheduler = one_cycle(self.optimizer, c.lr, (c.epochs - epoch + 1) * self.steps_per_epoch, 0.05)

    def learn(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        with self.autocast:
            loss = self.model.training_loss(images, text, mask)
        return clipped_step(loss, self.model, self.optimizer, self.scheduler)

    def epoch_metrics(self) -> dict[str, float]:
        return {"stage": 0.0 if self.vq.phase == "vq" else 1.0}

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        val_loss = metrics["val_loss"]
        if self.vq.phase == "prior" and (self.best is None or val_loss < self.best[0]):
            state = {
                k: v.detach().clone()
                for k, v in [
                    *self.vq.prior.state_dict().items(),
                    *(("condition." + k, v) for k, v in self.vq.condition.state_dict().items()),
                ]
            }
            self.best = (val_loss, epoch, state)

    def finish(self, result: FitResult) -> None:
        """Restore the best prior and report its epoch (the last one when the prior never trained)."""
        if self.best is None:
            return
        _, result.best_epoch, state = self.best
        self.vq.prior.load_state_dict({k: v for k, v in state.items() if not k.startswith("condition.")})
        self.vq.condition.load_state_dict(
            {k[len("condition.") :]: v for k, v in state.items() if k.startswith("condition.")}
        )
