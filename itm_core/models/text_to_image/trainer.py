"""How a text-to-image model learns, for :func:`itm_core.models.loop.fit`: (image, caption) pairs with
one random caption per image an epoch, a validation loss with fixed noise, and an exponential moving
average of the weights for the models that sample with one. Each model supplies its ``learn`` step."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from itm_core.data.pairs import captions_per_image
from itm_core.models.loop import Trainer, adamw, clipped_step, one_cycle, step_autocast
from itm_core.models.text_to_image.base import TextFeatures, TextToImageBase, TextToImageModel

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@torch.no_grad()
def validation_loss(
    model: TextToImageModel, images: torch.Tensor, features: TextFeatures, seed: int, batch_size: int = 256
) -> float:
    """The training loss on validation pairs with fixed noise (one caption per image)."""
    model.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    rows = features.first_captions(len(images))
    losses = []
    for s in range(0, len(rows), batch_size):
        r = rows[s : s + batch_size]
        mask = None if features.mask is None else features.mask[r]
        losses.append(
            model.training_loss(images[features.caption_image[r]], features.text[r].float(), mask).item() * len(r)
        )
    torch.random.set_rng_state(state)
    return float(sum(losses) / max(1, len(rows)))


@torch.no_grad()
def update_average(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``ema`` toward ``model``: parameters and floating buffers named by ``model.averaged(name)``
    (all when it has no such method) by ``1 - decay``; the others are copied, so a GAN's averaged
    generator is judged by the discriminator being trained."""
    averaged = getattr(model, "averaged", lambda name: True)
    for (name, e), p in zip([*ema.named_parameters(), *ema.named_buffers()], [*model.parameters(), *model.buffers()]):
        if averaged(name) and e.dtype.is_floating_point:
            e.lerp_(p, 1 - decay)
        else:
            e.copy_(p)


class T2ITrainer(Trainer):
    """The batches, the average and the validation every text-to-image model shares; a model's trainer
    supplies :meth:`learn`, one optimisation step on a batch (its forward pass under ``self.autocast``)."""

    def __init__(
        self,
        model: TextToImageModel,
        options: TextToImageBase,
        train_images: torch.Tensor,
        train: TextFeatures,
        val_images: torch.Tensor,
        val: TextFeatures,
    ) -> None:
        self.model, self.options, self.train, self.val = model, options, train, val
        self.train_images, self.val_images = train_images, val_images
        self.autocast = step_autocast(options.precision)
        self.decay: float | None = getattr(options, "ema_decay", None)
        self.ema = copy.deepcopy(model) if self.decay is not None else None
        self.per_image = captions_per_image(train.caption_image, len(train_images))
        self.usable = [i for i, rows in enumerate(self.per_image) if rows]
        self.steps_per_epoch = max(1, len(self.usable) // options.batch_size)
        self.steps = 0
        self.rng = random.Random(options.seed)

    @property
    def sampler(self) -> TextToImageModel:
        """What samples and is validated: the moving average where the model keeps one."""
        return self.ema if self.ema is not None else self.model

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def batches(self) -> Iterator[Batch]:
        size = self.options.batch_size
        order = self.usable[:]
        self.rng.shuffle(order)
        for b in range(self.steps_per_epoch):
            batch = order[b * size : (b + 1) * size]
            picked = torch.tensor([self.rng.choice(self.per_image[i]) for i in batch])
            mask = None if self.train.mask is None else self.train.mask[picked]
            yield self.train_images[batch], self.train.text[picked].float(), mask

    def learn(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        raise NotImplementedError

    def step(self, batch: Batch) -> float:
        loss = self.learn(*batch)
        if self.ema is not None and self.decay is not None:
            update_average(self.ema, self.model, min(self.decay, (1 + self.steps) / (10 + self.steps)))
        self.steps += 1
        return loss

    def validate(self) -> dict[str, float]:
        return {"val_loss": validation_loss(self.sampler, self.val_images, self.val, self.options.seed)}


class LossTrainer(T2ITrainer):
    """One optimiser on one loss (cvae, diffusion) under a one-cycle schedule."""

    def __init__(self, model: TextToImageModel, options: TextToImageBase, *data: Any) -> None:
        super().__init__(model, options, *data)
        self.optimizer = adamw(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.scheduler = one_cycle(self.optimizer, options.lr, options.epochs * self.steps_per_epoch, 0.05)

    def learn(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> float:
        with self.autocast:
            loss = self.model.training_loss(images, text, mask)
        return clipped_step(loss, self.model, self.optimizer, self.scheduler)
