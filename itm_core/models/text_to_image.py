"""Text-to-image models trained from scratch at low resolution, conditioned on a text encoder plugin.

Two models share the conditioning, the training loop and the save format:

- ``diffusion``: a diffusers ``UNet2DConditionModel`` that cross-attends to the text encoder's token
  features (its pooled feature when it has no ``encode_tokens``), trained with a ``DDPMScheduler``
  (predicting the clean image by default: on a CPU budget of a few hundred steps it gives cleaner
  samples than noise prediction) and sampled with ``DDIMScheduler`` and classifier-free guidance.
- ``cvae``: a conditional variational auto-encoder on the pooled text feature, the fast alternative.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from itm_core.ops.saving import load_weights, read_meta, restore_encoder, save_model_folder
from itm_core.models.training import TrainSchedule, captions_per_image, clipped_step, one_cycle, seed_everything

CONFIG_FILE = "text_to_image.json"


@dataclass
class TextToImageConfig(TrainSchedule):
    model: Literal["diffusion", "cvae"] = "cvae"
    resolution: int = 32
    cond_dim: int = 128
    # cvae
    latent_dim: int = 32
    channels: int = 64
    kl_weight: float = 1.0
    # diffusion
    block_channels: tuple[int, ...] = (32, 64, 64)
    train_timesteps: int = 1000
    prediction_type: str = "sample"
    sample_steps: int = 30
    guidance_scale: float = 3.0
    uncond_prob: float = 0.1
    ema_decay: float = 0.995
    epochs: int = 60


def images_to_tensor(images: Sequence[Any], resolution: int) -> torch.Tensor:
    """PIL images as ``(N, 3, r, r)`` in ``[-1, 1]``."""
    from PIL import Image

    arrays = [np.asarray(img.convert("RGB").resize((resolution, resolution), Image.BILINEAR), dtype=np.float32) for img in images]
    if not arrays:
        return torch.zeros(0, 3, resolution, resolution)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> list[Any]:
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class TextCondition(nn.Module):
    """Standardised text features projected to ``cond_dim``: ``(N, L, cond_dim)`` tokens with a mask."""

    def __init__(self, feature_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.proj = nn.Sequential(nn.Linear(feature_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def set_statistics(self, features: torch.Tensor, mask: torch.Tensor | None) -> None:
        flat = features.float() if features.dim() == 2 else features.float()[mask]
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj((features.float() - self.mean) / self.std)


class ConditionalVAE(nn.Module):
    """Conv encoder q(z | x, c) and deconv decoder p(x | z, c); ``c`` is the pooled text condition."""

    def __init__(self, text_dim: int, config: TextToImageConfig) -> None:
        super().__init__()
        r, ch, self.config = config.resolution, config.channels, config
        if r % 8:
            raise ValueError(f"cvae: resolution must be a multiple of 8, got {r}")
        self.side = r // 8
        self.condition = TextCondition(text_dim, config.cond_dim)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.SiLU(), nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(ch * 2, ch * 2, 4, 2, 1), nn.SiLU(), nn.Flatten(),
        )
        flat = ch * 2 * self.side * self.side
        self.to_latent = nn.Linear(flat + config.cond_dim, 2 * config.latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(config.latent_dim + config.cond_dim, flat), nn.SiLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(ch * 2, ch * 2, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(ch * 2, ch, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(ch, ch, 4, 2, 1), nn.SiLU(), nn.Conv2d(ch, 3, 3, 1, 1), nn.Tanh(),
        )

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, cond], dim=1)).view(len(z), -1, self.side, self.side)
        return self.decoder(h)

    def training_loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        cond = self.condition(text)
        mu, logvar = self.to_latent(torch.cat([self.encoder(images), cond], dim=1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.decode(z, cond)
        rec = F.mse_loss(recon, images, reduction="none").flatten(1).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        return (rec + self.config.kl_weight * kl) / images[0].numel()

    @torch.no_grad()
    def sample(self, text: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        cond = self.condition(text)
        z = torch.randn(len(text), self.config.latent_dim, generator=generator)
        return self.decode(z, cond)


class ConditionalDiffusion(nn.Module):
    """A small ``UNet2DConditionModel`` over pixels, cross-attending to the projected text tokens."""

    def __init__(self, text_dim: int, config: TextToImageConfig) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel

        super().__init__()
        self.config = config
        blocks = len(config.block_channels)
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1)
        up = ("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",)
        self.condition = TextCondition(text_dim, config.cond_dim)
        self.unet = UNet2DConditionModel(
            sample_size=config.resolution, in_channels=3, out_channels=3, block_out_channels=tuple(config.block_channels),
            layers_per_block=1, down_block_types=down, up_block_types=up, cross_attention_dim=config.cond_dim,
            attention_head_dim=8, norm_num_groups=min(32, min(config.block_channels) // 2),
        )
        self.train_scheduler = DDPMScheduler(num_train_timesteps=config.train_timesteps, beta_schedule="squaredcos_cap_v2",
                                             prediction_type=config.prediction_type)

    def _cond(self, text: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if text.dim() == 2:
            text, mask = text[:, None], torch.ones(len(text), 1, dtype=torch.bool)
        return self.condition(text), mask

    def training_loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        cond, mask = self._cond(text, mask)
        drop = torch.rand(len(images)) < self.config.uncond_prob
        cond = cond.masked_fill(drop[:, None, None], 0.0)
        noise = torch.randn_like(images)
        t = torch.randint(0, self.config.train_timesteps, (len(images),))
        noisy = self.train_scheduler.add_noise(images, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=cond, encoder_attention_mask=mask.float()).sample
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = images
        else:
            target = self.train_scheduler.get_velocity(images, noise, t)
        return F.mse_loss(pred, target)

    @torch.no_grad()
    def sample(self, text: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        from diffusers import DDIMScheduler

        cond, mask = self._cond(text, mask)
        scheduler = DDIMScheduler.from_config(self.train_scheduler.config)
        scheduler.set_timesteps(self.config.sample_steps)
        n, r = len(text), self.config.resolution
        x = torch.randn(n, 3, r, r, generator=generator)
        both_cond = torch.cat([cond, torch.zeros_like(cond)])
        both_mask = torch.cat([mask, mask]).float()
        g = self.config.guidance_scale
        for t in scheduler.timesteps:
            out = self.unet(torch.cat([x, x]), t, encoder_hidden_states=both_cond, encoder_attention_mask=both_mask).sample
            cond_out, uncond_out = out.chunk(2)
            x = scheduler.step(uncond_out + g * (cond_out - uncond_out), t, x).prev_sample
        return x


MODELS: dict[str, type[nn.Module]] = {"cvae": ConditionalVAE, "diffusion": ConditionalDiffusion}


def uses_tokens(config: TextToImageConfig, text_encoder: Any) -> bool:
    """The diffusion model cross-attends to token features when the text encoder gives them."""
    return config.model == "diffusion" and hasattr(text_encoder, "encode_tokens")


class TextToImage:
    """A trained model with its text encoder: prompts in, PIL images out (the same seed, the same images)."""

    def __init__(self, model: nn.Module, text_encoder_spec: dict[str, Any], text_dim: int, tokens: bool, encoder: Any | None = None) -> None:
        self.model = model.eval()
        self.text_encoder_spec = text_encoder_spec
        self.text_dim = text_dim
        self.tokens = tokens
        self.encoder = encoder

    @property
    def config(self) -> TextToImageConfig:
        return self.model.config

    def text_features(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.encoder is None:
            raise RuntimeError("this model has no text encoder attached; use TextToImage.load")
        with torch.inference_mode():
            if self.tokens:
                tok, mask = self.encoder.encode_tokens(list(prompts))
                return tok.float(), mask.bool()
            return self.encoder.encode(list(prompts)).float(), None

    def generate_from_features(self, text: torch.Tensor, mask: torch.Tensor | None, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        self.model.eval()
        generator = torch.Generator().manual_seed(seed)
        parts = [self.model.sample(text[s : s + batch_size], None if mask is None else mask[s : s + batch_size], generator)
                 for s in range(0, len(text), batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, 3, self.config.resolution, self.config.resolution)

    def generate(self, prompts: Sequence[str], seed: int = 0) -> list[Any]:
        if len(prompts) == 0:
            return []
        text, mask = self.text_features(prompts)
        return tensor_to_images(self.generate_from_features(text, mask, seed))

    def save(self, folder: str | Path) -> Path:
        meta = {"kind": "text-to-image", "config": asdict(self.config), "text_encoder": self.text_encoder_spec, "text_dim": self.text_dim, "tokens": self.tokens}
        return save_model_folder(folder, CONFIG_FILE, meta, self.model, self.encoder, "text_encoder")

    @classmethod
    def load(cls, folder: str | Path) -> "TextToImage":
        meta = read_meta(folder, CONFIG_FILE, "text-to-image model")
        raw = meta["config"]
        config = TextToImageConfig(**{**raw, "block_channels": tuple(raw["block_channels"])})
        model = load_weights(folder, MODELS[config.model](meta["text_dim"], config))
        return cls(model, meta["text_encoder"], meta["text_dim"], meta["tokens"], restore_encoder(folder, meta["text_encoder"], "text_encoder"))


@dataclass
class TextFeatures:
    """Per-caption text features (pooled ``(M, D)`` or tokens ``(M, L, D)`` with a mask) and the image of each caption."""

    text: torch.Tensor
    mask: torch.Tensor | None
    caption_image: torch.Tensor

    def first_captions(self, n_images: int) -> torch.Tensor:
        """The row of each image's first caption, for images that have one."""
        return torch.tensor([rows[0] for rows in captions_per_image(self.caption_image, n_images) if rows], dtype=torch.long)


@dataclass
class T2ITrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "epochs"
    best_epoch: int = 0


@torch.no_grad()
def validation_loss(model: nn.Module, images: torch.Tensor, features: TextFeatures, seed: int, batch_size: int = 256) -> float:
    """The training loss on validation pairs with fixed noise (one caption per image)."""
    model.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    rows = features.first_captions(len(images))
    losses = []
    for s in range(0, len(rows), batch_size):
        r = rows[s : s + batch_size]
        mask = None if features.mask is None else features.mask[r]
        losses.append(model.training_loss(images[features.caption_image[r]], features.text[r].float(), mask).item() * len(r))
    torch.random.set_rng_state(state)
    return float(sum(losses) / max(1, len(rows)))


def train_text_to_image(
    text_encoder_spec: dict[str, Any],
    train_images: torch.Tensor,
    train: TextFeatures,
    val_images: torch.Tensor,
    val: TextFeatures,
    config: TextToImageConfig,
    on_epoch: Callable[[int, dict[str, float], TextToImage], None] | None = None,
) -> tuple[TextToImage, T2ITrainResult]:
    """Train on (image, caption) pairs, one random caption per image each epoch; the diffusion model
    keeps an exponential moving average of its weights, which is what it samples with.

    ``time_limit_s`` (when above 0) ends training after the epoch that passes it."""
    seed_everything(config.seed)
    start = time.perf_counter()
    tokens = train.text.dim() == 3
    model = MODELS[config.model](train.text.shape[-1], config)
    model.condition.set_statistics(train.text, train.mask)
    ema = copy.deepcopy(model) if config.model == "diffusion" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_image = captions_per_image(train.caption_image, len(train_images))
    usable = [i for i, rows in enumerate(per_image) if rows]
    steps_per_epoch = max(1, len(usable) // config.batch_size)
    scheduler = one_cycle(optimizer, config.lr, config.epochs * steps_per_epoch, 0.05)
    rng = random.Random(config.seed)
    result = T2ITrainResult()
    trained = TextToImage(ema if ema is not None else model, text_encoder_spec, train.text.shape[-1], tokens)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = usable[:]
        rng.shuffle(order)
        losses = []
        for b in range(steps_per_epoch):
            batch = order[b * config.batch_size : (b + 1) * config.batch_size]
            picked = torch.tensor([rng.choice(per_image[i]) for i in batch])
            mask = None if train.mask is None else train.mask[picked]
            loss = clipped_step(model.training_loss(train_images[batch], train.text[picked].float(), mask), model, optimizer, scheduler)
            if ema is not None:
                decay = min(config.ema_decay, (1 + result.steps) / (10 + result.steps))
                with torch.no_grad():
                    for e, p in zip(ema.parameters(), model.parameters()):
                        e.lerp_(p, 1 - decay)
            result.steps += 1
            losses.append(loss)
        metrics = {"train_loss": float(np.mean(losses)), "val_loss": validation_loss(trained.model, val_images, val, config.seed)}
        result.history.append({"epoch": epoch, **metrics})
        result.best_epoch = epoch
        if on_epoch is not None:
            on_epoch(epoch, metrics, trained)
        if config.time_limit_s and time.perf_counter() - start > config.time_limit_s:
            result.stopped = "time limit"
            break
    trained.model.eval()
    result.seconds = time.perf_counter() - start
    return trained, result
