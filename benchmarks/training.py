"""Contrastive training against a plain torch loop (float32, bfloat16, data-parallel), and the generator's
training in float32 and bfloat16."""

from __future__ import annotations

from benchmarks.common import (
    Row,
    cpu_bf16_note,
    timed,
)


def bench_training(n_img: int, epochs: int, repeats: int = 3) -> list[Row]:
    """The training loop against a plain loop over the same heads, features and steps (each the best
    of ``repeats`` interleaved runs), and the same loop data-parallel in two processes."""
    import torch

    from itm_core.data.pairs import captions_per_image
    from itm_core.encode.features import FeatureSplit
    from itm_core.models.distributed import train_in_processes
    from itm_core.models.matcher import Matcher
    from itm_core.models.training import LOW_RANK, LOW_RANK_IMAGES, ContrastiveTraining, clip_loss, train_contrastive

    torch.manual_seed(0)
    owner = torch.arange(n_img).repeat_interleave(5)
    train = FeatureSplit(torch.randn(n_img, 6400), torch.randn(5 * n_img, 384), owner)
    val = FeatureSplit(torch.randn(200, 6400), torch.randn(1000, 384), torch.arange(200).repeat_interleave(5))
    # float32 and five passes an epoch, as the plain loop runs (the defaults would settle on bf16 and fewer passes)
    config = ContrastiveTraining(epochs=epochs, patience=epochs + 1, passes=5, precision="fp32")

    def matcher(options: ContrastiveTraining = config) -> Matcher:
        torch.manual_seed(0)
        return options.build_matcher({"name": "x"}, {"name": "y"}, 6400, 384, images=n_img)

    steps_per_epoch = 5 * (n_img // config.batch_size)

    def plain() -> None:
        p = matcher()
        p.image_head.set_statistics(train.image)
        p.text_head.set_statistics(train.text)
        opt = torch.optim.AdamW(p.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        caps = captions_per_image(owner, n_img)
        p.train()
        for _ in range(epochs * steps_per_epoch):
            batch = torch.randperm(n_img)[: config.batch_size]
            picked = [caps[i][0] for i in batch.tolist()]
            loss = clip_loss(p.logits(train.image[batch], train.text[picked]))
            opt.zero_grad()
            loss.backward()
            opt.step()

    bf16 = config.model_copy(update={"precision": "bf16"})
    low_rank = bf16.model_copy(update={"input_rank": LOW_RANK})
    runs = {
        "ours": lambda: train_contrastive(matcher(), train, val, config),
        "plain": plain,
        "bf16": lambda: train_contrastive(matcher(), train, val, bf16),
        "rank": lambda: train_contrastive(matcher(low_rank), train, val, low_rank),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):  # interleaved: drift in the machine's speed touches every run alike
        for name, run in runs.items():
            best[name] = min(best[name], timed(run)[0])
    t_ours, t_plain, t_bf16, t_rank = (best[name] for name in runs)
    t_two, _ = timed(lambda: train_in_processes(2, matcher(), train, val, config))
    samples = epochs * steps_per_epoch * config.batch_size
    return [
        {
            "what": "contrastive training, samples/s",
            "reference": "a plain torch loop over the same heads and features",
            "value": samples / t_ours,
            "ref_value": samples / t_plain,
            "ratio": t_plain / t_ours,
            "target": ">= 0.95x",
            "note": f"{n_img} images, {epochs} epochs, best of {repeats} interleaved runs each; ours also validates "
            "every epoch (200 images) and keeps the best weights; its AdamW runs the fused kernel, the plain loop's "
            "torch's default",
        },
        {
            "what": "the same training with `training.precision: bf16`, samples/s",
            "reference": "float32",
            "value": samples / t_bf16,
            "ref_value": samples / t_ours,
            "ratio": t_ours / t_bf16,
            "target": "reported",
            "note": f"bfloat16 autocast on the training steps (validation in float32); CPU bf16 support: "
            f"{cpu_bf16_note()}",
        },
        {
            "what": f"the same bf16 training with `training.input_rank: {LOW_RANK}`, samples/s",
            "reference": "bf16 with a full first layer",
            "value": samples / t_rank,
            "ref_value": samples / t_bf16,
            "ratio": t_bf16 / t_rank,
            "target": "reported",
            "note": f"the image head's first layer factored through rank {LOW_RANK} (6,400 -> {LOW_RANK} -> 1,024): "
            f"what `input_rank: auto` settles on from {LOW_RANK_IMAGES:,} training images up",
        },
        {
            "what": "the same training data-parallel in 2 processes x 1 thread (`training.processes: 2`), samples/s",
            "reference": "1 process x all threads",
            "value": samples / t_two,
            "ref_value": samples / t_ours,
            "ratio": t_ours / t_two,
            "target": "reported",
            "note": "includes starting the processes and handing them the features; on 2 cores one process already "
            "uses both",
        },
    ]


def bench_generator_training(n_img: int, epochs: int, repeats: int = 2) -> list[Row]:
    """The default cvae (the flow's settings: token condition on MiniLM-sized token features, 32
    pixels) trained by ``train_text_to_image`` in float32 and under ``precision: bf16``."""

    import torch

    from itm_core.models.text_to_image import CVAEOptions, TextFeatures, train_text_to_image

    g = torch.Generator().manual_seed(0)
    images = torch.rand(n_img, 3, 32, 32, generator=g) * 2 - 1
    tokens, mask = torch.randn(n_img, 16, 384, generator=g), torch.ones(n_img, 16, dtype=torch.bool)
    features = TextFeatures(tokens, mask, torch.arange(n_img))
    val = TextFeatures(tokens[:64], mask[:64], torch.arange(64))
    config = CVAEOptions(epochs=epochs, time_limit_s=0)  # the default cvae
    times: dict[str, float] = {}
    losses: dict[str, float] = {}
    for _ in range(repeats):
        for precision in ("fp32", "bf16"):
            seconds, (_, result) = timed(
                lambda: train_text_to_image(
                    {"name": "random"},
                    images,
                    features,
                    images[:64],
                    val,
                    config.model_copy(update={"precision": precision}),
                )
            )
            times[precision] = min(times.get(precision, float("inf")), seconds)
            losses[precision] = result.history[-1]["val_loss"]
    return [
        {
            "what": "cvae training (the default generator) with `text_to_image.precision: bf16`, images/s",
            "reference": "float32",
            "value": n_img * epochs / times["bf16"],
            "ref_value": n_img * epochs / times["fp32"],
            "ratio": times["fp32"] / times["bf16"],
            "target": "reported",
            "note": f"{n_img} random 32-pixel images with 16 random 384-d tokens each, {epochs} epochs, best of "
            f"{repeats} interleaved runs; "
            f"validation loss {losses['fp32']:.4f} (float32) and {losses['bf16']:.4f} (bf16); CPU bf16 support: "
            f"{cpu_bf16_note()}; "
            "`precision: auto` (the cvae's default) picks bf16 only where the CPU has such instructions",
        }
    ]
