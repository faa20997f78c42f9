"""Contrastive training of matcher heads, reproducibility, and matcher persistence."""

from __future__ import annotations

import pytest
import torch

from itm_core import ModelError
from itm_core.encode.features import FeatureSplit
from itm_core.models.loop import Trainer, adam, adamw, fit
from itm_core.models.matcher import Matcher
from itm_core.models.process_group import Ranks
from itm_core.models.training import (
    ContrastiveTrainer,
    ContrastiveTraining,
    clip_loss,
    evaluate_features,
    train_contrastive,
)


def synthetic(n_images: int, seed: int) -> FeatureSplit:
    """Images in 12 dims; two noisy captions per image in 10 dims, a fixed linear map apart."""
    g = torch.Generator().manual_seed(seed)
    mapping = torch.Generator().manual_seed(99)
    w = torch.randn(12, 10, generator=mapping)
    image = torch.randn(n_images, 12, generator=g)
    owner = torch.arange(n_images).repeat_interleave(2)
    text = image[owner] @ w + 0.1 * torch.randn(len(owner), 10, generator=g)
    return FeatureSplit(image, text, owner)


def new_matcher() -> Matcher:
    torch.manual_seed(0)
    return Matcher({"name": "img"}, {"name": "txt"}, 12, 10, embed_dim=16, hidden_dim=32, dropout=0.0)


def test_clip_loss_prefers_the_diagonal():
    good = torch.eye(4) * 10
    assert clip_loss(good) < clip_loss(torch.zeros(4, 4)) < clip_loss(-good)


def test_training_learns_and_keeps_the_best_epoch():
    train, val, test = synthetic(200, 1), synthetic(50, 2), synthetic(50, 3)
    matcher = new_matcher()
    before = evaluate_features(matcher, test)
    seen = []
    result = train_contrastive(
        matcher,
        train,
        val,
        ContrastiveTraining(epochs=30, batch_size=32, lr=3e-3, patience=30),
        lambda e, m: seen.append(e),
    )
    after = evaluate_features(matcher, test)
    assert after["i2t_r1"] > 0.8 and after["t2i_r1"] > 0.8
    assert after["rsum"] > before["rsum"] + 200
    assert seen == list(range(1, len(result.history) + 1))
    best = max(h["val_rsum"] for h in result.history)
    assert result.best_value == best and evaluate_features(matcher, val)["rsum"] == pytest.approx(best)
    assert {"train_loss", "temperature", "val_i2t_r1", "val_t2i_medr"} <= set(result.history[0])


def test_bf16_training_runs_its_steps_in_bfloat16_and_learns_as_float32_does():
    train, val, test = synthetic(200, 1), synthetic(50, 2), synthetic(50, 3)
    runs = {}
    for precision in ("fp32", "bf16"):
        matcher, seen = new_matcher(), set()
        linear = next(m for m in matcher.image_head.modules() if isinstance(m, torch.nn.Linear))
        hook = linear.register_forward_hook(lambda module, args, out, seen=seen: seen.add((module.training, out.dtype)))
        config = ContrastiveTraining(epochs=30, batch_size=32, lr=3e-3, patience=30, precision=precision)
        result = train_contrastive(matcher, train, val, config)
        hook.remove()
        runs[precision] = (result, evaluate_features(matcher, test), seen, matcher)
    (fp32, fp32_test, fp32_seen, _), (bf16, bf16_test, bf16_seen, bf16_matcher) = runs["fp32"], runs["bf16"]
    assert fp32_seen == {(True, torch.float32), (False, torch.float32)}
    assert bf16_seen == {(True, torch.bfloat16), (False, torch.float32)}  # steps in bf16, validation in float32
    assert all(p.dtype == torch.float32 for p in bf16_matcher.parameters())
    assert bf16.history[0]["train_loss"] != fp32.history[0]["train_loss"]
    assert bf16.history[0]["train_loss"] == pytest.approx(fp32.history[0]["train_loss"], rel=0.05)
    assert bf16_test["i2t_r1"] > 0.8 and bf16_test["t2i_r1"] > 0.8
    assert abs(bf16_test["rsum"] - fp32_test["rsum"]) < 30


def test_an_unknown_training_precision_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"precision\n  Input should be 'auto', 'fp32' or 'bf16'"):
        ContrastiveTraining(epochs=1, batch_size=16, precision="fp16")


def test_the_default_precision_is_bf16_where_it_runs_natively():
    from itm_core.models.loop import cpu_bf16_flags

    train, val = synthetic(32, 1), synthetic(16, 2)
    trainer = ContrastiveTrainer(new_matcher(), train, val, ContrastiveTraining(), {}, Ranks())
    assert ContrastiveTraining().precision == "auto"
    assert trainer.precision == ("bf16" if cpu_bf16_flags() else "fp32")
    assert trainer.autocast.fast_dtype == torch.bfloat16 and trainer.autocast._enabled == bool(cpu_bf16_flags())


@pytest.mark.parametrize(
    ("build", "plain_class", "options"),
    [(adamw, torch.optim.AdamW, {"weight_decay": 0.01}), (adam, torch.optim.Adam, {"betas": (0.0, 0.9)})],
    ids=["adamw", "adam"],
)
def test_adam_and_adamw_use_the_fused_kernel_where_they_can_and_make_the_same_update(build, plain_class, options):
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    start = [w.detach().clone() for w in weights]
    twins = [torch.nn.Parameter(w.clone()) for w in start]
    fused = build([{"params": iter(weights), "lr": 1e-2}], **options)
    plain = plain_class([{"params": twins, "lr": 1e-2}], fused=False, **options)
    assert fused.param_groups[0]["fused"] is True
    for _ in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for opt, params in ((fused, weights), (plain, twins)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for w, t, s in zip(weights, twins, start, strict=True):
        assert torch.allclose(w, t, atol=1e-6)
        assert (w - s).abs().max() > 1e-2  # five steps of lr 1e-2 moved them
    elsewhere = build([torch.nn.Parameter(torch.zeros(3, device="meta"))], lr=1e-3)
    assert not elsewhere.param_groups[0]["fused"]  # a device without the fused kernel: the plain update


def test_an_epoch_draws_every_caption_of_small_data_and_one_per_image_of_large_data():
    from itm_core.models.training import auto_passes

    sizes = (500, 2000, 29000, 30000, 40000, 60000, 113287, 200000)
    assert [auto_passes(n, 5 * n) for n in sizes] == [5, 5, 5, 5, 4, 3, 2, 1]
    assert auto_passes(2000, 2000) == 1  # one caption per image: one pass whatever the size
    train, val = synthetic(40, 1), synthetic(16, 2)  # two captions per image
    counted, patience = [], []
    for passes in (0, 1, 3):
        options = ContrastiveTraining(epochs=1, batch_size=8, passes=passes, patience=6)
        trainer = ContrastiveTrainer(new_matcher(), train, val, options, {}, Ranks())
        counted.append(sum(len(images) for images, _ in trainer.batches()))
        patience.append(trainer.patience)
    assert counted == [80, 40, 120]
    assert patience == [6, 12, 4]  # counted in epochs of every caption: a one-pass epoch is half of one here


def test_early_stopping():
    train, val = synthetic(64, 1), synthetic(16, 5)
    val = FeatureSplit(val.image, torch.randn_like(val.text), val.caption_image)  # nothing to learn on val
    result = train_contrastive(new_matcher(), train, val, ContrastiveTraining(epochs=50, batch_size=16, patience=2))
    assert len(result.history) == result.best_epoch + 2 < 50


def test_time_limit_ends_training_after_the_epoch_that_passes_it():
    train, val = synthetic(64, 1), synthetic(16, 2)
    result = train_contrastive(
        new_matcher(), train, val, ContrastiveTraining(epochs=50, batch_size=16, patience=50, time_limit_s=1e-9)
    )
    assert len(result.history) == 1 and result.best_epoch == 1


def test_a_run_of_a_few_steps_trains():
    train, val = synthetic(32, 1), synthetic(16, 2)
    result = train_contrastive(
        new_matcher(), train, val, ContrastiveTraining(epochs=1, batch_size=16)
    )  # 2 passes x 2 batches
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0


def test_training_is_reproducible_on_cpu():
    train, val = synthetic(64, 1), synthetic(16, 2)
    states = []
    for _ in range(2):
        m = new_matcher()
        train_contrastive(m, train, val, ContrastiveTraining(epochs=3, batch_size=16, seed=7))
        states.append(m.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_matcher_save_and_load(tmp_path):
    from itm_core import create

    tfidf = create("encoder", "tfidf", max_features=32)
    tfidf.fit(["a red circle", "a blue square"])
    hist = create("encoder", "color-histogram", bins=2, grid=1)
    matcher = Matcher(
        {"name": "color-histogram", "options": {"bins": 2, "grid": 1}},
        {"name": "tfidf", "options": {"max_features": 32}},
        8,
        32,
        embed_dim=4,
        hidden_dim=0,
    )
    matcher.attach_encoders(hist, tfidf).eval()
    matcher.save(tmp_path / "m")
    loaded = Matcher.load(tmp_path / "m")
    texts = ["a red circle", "blue"]
    assert torch.equal(loaded.embed_texts(texts), matcher.embed_texts(texts))
    assert torch.equal(loaded.logit_scale, matcher.logit_scale)
    with pytest.raises(ModelError, match="not a saved matcher"):
        Matcher.load(tmp_path)


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    """Training stopped after epoch 3 (a crash while logging epoch 4) and resumed from the epoch-3
    checkpoint, written and read back as a file, ends with the weights and history of a run never stopped."""
    train, val = synthetic(120, 1), synthetic(40, 2)
    config = ContrastiveTraining(epochs=8, batch_size=16, lr=3e-3, patience=8)

    # dropout on, so that the random state matters
    def make() -> Matcher:
        torch.manual_seed(0)
        return Matcher({"name": "img"}, {"name": "txt"}, 12, 10, embed_dim=16, hidden_dim=32, dropout=0.2)

    whole = make()
    reference = train_contrastive(whole, train, val, config)

    class Crash(Exception):
        pass

    def crash_at_4(epoch, metrics):
        if epoch == 4:
            raise Crash

    def save(state):
        torch.save(state, tmp_path / "last.pt")

    with pytest.raises(Crash):
        train_contrastive(make(), train, val, config, crash_at_4, checkpoint=save)
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # plain data: no code runs on load
    assert state["epoch"] == 3 and not state["done"]
    resumed_matcher = make()
    seen = []
    resumed = train_contrastive(resumed_matcher, train, val, config, lambda e, m: seen.append(e), resume=state)
    assert seen == list(range(4, len(reference.history) + 1))
    assert resumed.history == reference.history and resumed.best_epoch == reference.best_epoch
    for a, b in zip(resumed_matcher.state_dict().values(), whole.state_dict().values()):
        assert torch.equal(a, b)


def test_saved_matcher_is_data_only_and_old_formats_name_their_version(tmp_path):
    import json

    from itm_core import create
    from itm_core.contract.state import StateFormatError

    tfidf = create("encoder", "tfidf", max_features=32)
    tfidf.fit(["a red circle", "a blue square"])
    m = Matcher(
        {"name": "color-histogram", "options": {}},
        {"name": "tfidf", "options": {"max_features": 32}},
        6**3 * 4,
        32,
        embed_dim=8,
        hidden_dim=0,
    )
    folder = m.attach_encoders(create("encoder", "color-histogram"), tfidf).save(tmp_path / "m")
    assert {p.suffix for p in folder.iterdir()} <= {".json", ".safetensors"}  # no pickle, no torch.save
    loaded = Matcher.load(folder)
    assert torch.equal(loaded.embed_texts(["a red circle"]), m.embed_texts(["a red circle"]))
    # a folder from itm-workbench 0.1: no format in matcher.json, torch.save weights, pickled states
    config = json.loads((folder / "matcher.json").read_text())
    config.pop("itm_format")
    (folder / "matcher.json").write_text(json.dumps(config))
    with pytest.raises(StateFormatError, match="saved by itm-workbench 0.1; this version reads format 2: retrain it"):
        Matcher.load(folder)


def test_a_low_rank_first_layer_serves_features_wider_than_the_hidden_layer_and_is_saved(tmp_path):
    import json

    options = ContrastiveTraining(embed_dim=8, hidden_dim=32, input_rank=4, dropout=0.0)
    towers = ({"name": "img"}, {"name": "txt"}, 64, 10)  # 64-d image features, 10-d text features
    torch.manual_seed(0)
    wide = options.build_matcher(*towers, images=100)
    shapes = [tuple(p.shape) for p in wide.image_head.net.parameters()]
    assert shapes == [(4, 64), (32, 4), (32,), (8, 32), (8,)]  # 64 -> 4 (no bias) -> 32 -> 8
    assert [tuple(p.shape) for p in wide.text_head.net.parameters()][0] == (32, 10)  # 10 < 32: a full layer
    for rank, hidden in ((32, 32), (48, 32), (4, 0)):  # a rank that saves nothing, or no hidden layer: no factor
        full = options.model_copy(update={"input_rank": rank, "hidden_dim": hidden})
        first = next(full.build_matcher(*towers, images=100).image_head.net.parameters())
        assert first.shape[1] == 64

    g = torch.Generator().manual_seed(3)
    lift = torch.randn(12, 64, generator=g)
    train, val = synthetic(200, 1), synthetic(50, 2)
    train, val = (FeatureSplit(s.image @ lift, s.text, s.caption_image) for s in (train, val))
    before = evaluate_features(wide, val)["rsum"]
    train_contrastive(wide, train, val, options.model_copy(update={"epochs": 20, "batch_size": 32, "lr": 3e-3}))
    assert evaluate_features(wide, val)["rsum"] > before + 200

    folder = wide.save(tmp_path / "wide")
    assert json.loads((folder / "matcher.json").read_text())["input_rank"] == 4
    loaded = Matcher.load(folder, attach=False)
    assert torch.equal(loaded.embed_image_features(val.image), wide.eval().embed_image_features(val.image))

    # auto: a full first layer on small data, where a low rank costs a few rsum; the low rank on large data
    assert [ContrastiveTraining().rank_for(n) for n in (2000, 19_999, 20_000, 113_287)] == [0, 0, 256, 256]
    assert ContrastiveTraining(input_rank=4).rank_for(2000) == 4
    for wrong in (-1, "big", 2.5):
        with pytest.raises(ValueError, match="input_rank\n.*expected 'auto' or a number of dimensions"):
            ContrastiveTraining(input_rank=wrong)

    # a matcher saved before the setting existed has full first layers, and loads as one
    old = options.model_copy(update={"input_rank": 0}).build_matcher(*towers, images=100)
    folder = old.save(tmp_path / "old")
    config = json.loads((folder / "matcher.json").read_text())
    del config["input_rank"]
    (folder / "matcher.json").write_text(json.dumps(config))
    reloaded = Matcher.load(folder, attach=False)
    assert torch.equal(reloaded.embed_image_features(val.image), old.eval().embed_image_features(val.image))


class _Scripted(Trainer):
    """A trainer whose validation figures are given; its one weight records the epoch it was set in."""

    def __init__(self, values: list[float]) -> None:
        self.values, self.weight, self.epoch = values, torch.nn.Linear(1, 1), 0

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"weight": self.weight}

    def batches(self) -> list[int]:
        return [0]

    def step(self, batch: int) -> float:
        self.epoch += 1
        with torch.no_grad():
            self.weight.bias.fill_(self.epoch)
        return 0.0

    def validate(self) -> dict[str, float]:
        return {"score": self.values[self.epoch - 1]}


def test_min_delta_stops_a_run_that_only_creeps_and_keeps_its_best_epoch():
    creeping = [1.0, 1.004, 1.008, 1.012, 1.03, 1.031]
    stopped = _Scripted(creeping)
    result = fit(stopped, epochs=6, patience=2, min_delta=0.01, monitor="score")
    assert (result.stopped, len(result.history), result.best_epoch) == ("patience", 3, 3)
    assert result.best_value == 1.008 and stopped.weight.bias.item() == 3  # the best epoch's weights are back
    unstopped = fit(_Scripted(creeping), epochs=6, patience=2, monitor="score")  # min_delta 0: every gain counts
    assert (unstopped.stopped, unstopped.best_epoch) == ("epochs", 6)
    # a gain above min_delta over the value that last reset the patience resets it again
    jumps = fit(_Scripted([1.0, 1.004, 1.02, 1.025, 1.029, 1.2]), epochs=6, patience=3, min_delta=0.01, monitor="score")
    assert (jumps.stopped, jumps.best_epoch) == ("epochs", 6)
