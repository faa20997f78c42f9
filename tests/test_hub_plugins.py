"""Hub-model plugins on tiny models saved locally: the real loading path, conformance, and parity with
the library's own model on the same weights (so published numbers reproduce with real checkpoints)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from itm_core import ModelError, create
from itm_core.testing import assert_conforms
from plugins import tiny_hub as tiny_models

IMAGES = [Image.new("RGB", (40, 50), "red"), Image.new("RGB", (32, 32), "blue"), Image.new("L", (20, 30), 200)]
TEXTS = ["a red circle", "two blue squares on the left", "a small white star at the top"]


def _built(tmp_path_factory, name, builder):
    return str(builder(tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _built(tmp_path_factory, "clip", tiny_models.clip)


@pytest.fixture(scope="module")
def blip_itm_dir(tmp_path_factory):
    return _built(tmp_path_factory, "blip-itm", tiny_models.blip_itm)


def test_clip_parity_with_clipmodel(clip_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    image = create("encoder", "clip", modality="image", model=clip_dir)
    text = create("encoder", "clip", modality="text", model=clip_dir)
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok, proc = AutoTokenizer.from_pretrained(clip_dir), AutoImageProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model(
            **tok(TEXTS, padding=True, return_tensors="pt"),
            **proc(images=[i.convert("RGB") for i in IMAGES], return_tensors="pt"),
        )
    ours = image.encode(IMAGES) @ text.encode(TEXTS).T
    assert torch.allclose(ours, out.logits_per_image / model.logit_scale.exp(), atol=1e-5)
    assert torch.allclose(image.encode(IMAGES), torch.nn.functional.normalize(out.image_embeds, dim=-1), atol=1e-5)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_clip_conforms(clip_dir, modality):
    assert_conforms("encoder", "clip", modality=modality, model=clip_dir)


def test_clip_pair_is_a_zero_shot_matcher_for_evaluate(clip_dir, tiny_shapes):
    from itm_core.config import ComponentParams, MatcherRef
    from itm_core.judge.evaluation import EncoderPair, evaluate_retrieval
    from itm_core.ops.scorers import build_scorer

    ref = MatcherRef(
        image_encoder=ComponentParams(name="clip", options={"modality": "image", "model": clip_dir}),
        text_encoder=ComponentParams(name="clip", options={"modality": "text", "model": clip_dir}),
    )
    scorer = build_scorer(ref)
    assert isinstance(scorer, EncoderPair)
    metrics = evaluate_retrieval(scorer, tiny_shapes.split("test"))
    assert 0.0 <= metrics["i2t_r1"] <= 1.0 and metrics["rsum"] > 0


def test_hf_text_parity_and_pooling(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    folder = str(tiny_models.bert(tmp_path))
    model, tok = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(create("encoder", "hf-text", model=folder).encode(TEXTS), mean, atol=1e-5)
    cls = create("encoder", "hf-text", model=folder, pooling="cls", normalize=False).encode(TEXTS)
    assert torch.allclose(cls, states[:, 0], atol=1e-5)
    assert_conforms("encoder", "hf-text", model=folder)


def test_hf_image_parity_and_pooling(tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    folder = str(tiny_models.vit(tmp_path))
    model, proc = AutoModel.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model(**proc(images=[i.convert("RGB") for i in IMAGES], return_tensors="pt"))
    assert torch.allclose(create("encoder", "hf-image", model=folder).encode(IMAGES), out.pooler_output, atol=1e-5)
    assert torch.allclose(
        create("encoder", "hf-image", model=folder, pooling="cls").encode(IMAGES),
        out.last_hidden_state[:, 0],
        atol=1e-5,
    )
    for pooling in ("pooler", "cls", "mean"):
        assert_conforms("encoder", "hf-image", model=folder, pooling=pooling)
    with pytest.raises(ValueError, match="pooling must be one of"):
        create("encoder", "hf-image", model=folder, pooling="max")


def test_blip_itm_parity_both_scores(blip_itm_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

    image = create("encoder", "blip-itm", modality="image", model=blip_itm_dir)
    text = create("encoder", "blip-itm", modality="text", model=blip_itm_dir)
    model = BlipForImageTextRetrieval.from_pretrained(blip_itm_dir).eval()
    tok, proc = AutoTokenizer.from_pretrained(blip_itm_dir), AutoImageProcessor.from_pretrained(blip_itm_dir)
    pixels = proc(images=[i.convert("RGB") for i in IMAGES], return_tensors="pt")["pixel_values"]
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        contrastive = model(pixel_values=pixels, use_itm_head=False, **batch).itm_score
        itm = model(pixel_values=pixels, use_itm_head=True, **batch).itm_score.softmax(-1)[:, 1]
    assert torch.allclose(image.encode(IMAGES) @ text.encode(TEXTS).T, contrastive, atol=1e-5)
    assert torch.allclose(image.itm_scores(IMAGES, TEXTS), itm, atol=1e-5)
    with pytest.raises(ValueError, match="aligned pairs"):
        image.itm_scores(IMAGES, TEXTS[:1])


@pytest.mark.parametrize("modality", ["image", "text"])
def test_blip_itm_conforms(blip_itm_dir, modality):
    assert_conforms("encoder", "blip-itm", modality=modality, model=blip_itm_dir)


def test_blip_caption_parity(tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, BlipForConditionalGeneration

    folder = str(tiny_models.blip_caption(tmp_path))
    captioner = create("generator", "blip-caption", model=folder, max_new_tokens=6)
    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    tok, proc = AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        ids = model.generate(
            pixel_values=proc(images=[i.convert("RGB") for i in IMAGES], return_tensors="pt")["pixel_values"],
            max_new_tokens=6,
            do_sample=False,
        )
    assert captioner.generate(IMAGES) == [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    assert_conforms("generator", "blip-caption", model=folder, max_new_tokens=4)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_vision_encoder_decoder_parity_greedy_and_beam(tmp_path, num_beams):
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    folder = str(tiny_models.vit_gpt2(tmp_path))
    captioner = create("generator", "vision-encoder-decoder", model=folder, max_new_tokens=6, num_beams=num_beams)
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    tok, proc = AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        ids = model.generate(
            pixel_values=proc(images=[i.convert("RGB") for i in IMAGES], return_tensors="pt")["pixel_values"],
            max_new_tokens=6,
            num_beams=num_beams,
            do_sample=False,
        )
    assert captioner.generate(IMAGES) == [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    assert_conforms("generator", "vision-encoder-decoder", model=folder, max_new_tokens=4, num_beams=num_beams)


def test_stable_diffusion_parity_and_options(tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = str(tiny_models.stable_diffusion(tmp_path))
    gen = create(
        "generator",
        "stable-diffusion",
        model=folder,
        steps=2,
        height=32,
        width=32,
        seed=5,
        guidance_scale=3.0,
        negative_prompt="blurry",
    )
    images = gen.generate(["a red circle", "a blue square"])
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompt=["a red circle", "a blue square"],
        negative_prompt=["blurry"] * 2,
        num_inference_steps=2,
        guidance_scale=3.0,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(5),
        output_type="pil",
    ).images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, ref))
    other_seed = gen.generate(["a red circle"], seed=6)[0]
    assert not np.array_equal(np.asarray(other_seed), np.asarray(images[0]))
    assert_conforms("generator", "stable-diffusion", model=folder, steps=1, height=32, width=32)


def test_missing_local_model_fails_clearly(tmp_path):
    """A folder that is not there is named as a missing folder, not as a malformed hub id."""
    for name, options in [
        ("clip", {"modality": "image", "model": "/no/such/folder"}),
        ("hf-text", {"model": "./nowhere"}),
        ("hf-image", {"model": str(tmp_path / "a" / "b")}),
        ("minilm", {"path": str(tmp_path / "none")}),
    ]:
        with pytest.raises(ModelError, match="the folder does not exist. Give a folder made by save_pretrained"):
            create("encoder", name, **options)
    (tmp_path / "empty").mkdir()  # a folder without a model: the library's reason, with the model named
    with pytest.raises(OSError, match="cannot load CLIPModel from"):
        create("encoder", "clip", modality="image", model=str(tmp_path / "empty"))


def test_bag_of_visual_words_orb_and_sift(tiny_shapes):
    from itm_core.data import load_images

    images = load_images(tiny_shapes.split("train").image_paths())
    for descriptor in ("orb", "sift"):
        enc = create("encoder", "bovw", descriptor=descriptor, vocabulary=16)
        enc.fit(images)
        out = enc.encode(images[:4])
        assert out.shape == (4, 16) and torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)
        other = create("encoder", "bovw", descriptor=descriptor, vocabulary=16)
        other.set_state(enc.get_state())
        assert torch.equal(other.encode(images[:4]), out)
    with pytest.raises(RuntimeError, match="must be fitted"):
        create("encoder", "bovw").encode(images[:1])
    assert_conforms("encoder", "bovw", vocabulary=4, descriptor="sift")


def test_bag_of_words():
    enc = create("encoder", "bow", max_features=8, binary=True)
    enc.fit(["red circle", "blue square", "red square"])
    out = enc.encode(["red red square", "green"])
    assert out.shape == (2, 8) and out[1].sum() == 0
    assert torch.allclose(out[0][out[0] > 0], torch.full((2,), 2**-0.5))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_retrain_fine_tunes_unlocked_clip_towers(clip_dir, prefect_server, mlflow_store, tiny_shapes_options):
    """Unlocked towers change, are saved with the matcher, and the registered model reproduces its test score."""
    from transformers import CLIPModel

    from flows.evaluate import evaluate
    from flows.retrain import retrain
    from itm_core.config import (
        ComponentParams,
        ContrastiveTraining,
        DatasetParams,
        EvaluateParams,
        MatcherRef,
        RetrainParams,
    )
    from itm_core.ops.tracking import load_matcher

    dataset = DatasetParams(options=tiny_shapes_options)
    towers = dict(
        image_encoder=ComponentParams(name="clip", options={"modality": "image", "model": clip_dir}),
        text_encoder=ComponentParams(name="clip", options={"modality": "text", "model": clip_dir}),
    )
    training = ContrastiveTraining(
        epochs=2, batch_size=16, hidden_dim=0, embed_dim=16, unlock=["image", "text"], tower_lr=1e-3
    )
    result = retrain(RetrainParams(dataset=dataset, training=training, **towers))

    matcher = load_matcher(f"models:/itm-matcher/{result['model_version']}")
    original = CLIPModel.from_pretrained(clip_dir)
    tuned_vision = matcher.encoders["image"].model.vision_model.embeddings.patch_embedding.weight
    tuned_text = matcher.encoders["text"].model.text_model.embeddings.token_embedding.weight
    assert not torch.allclose(tuned_vision, original.vision_model.embeddings.patch_embedding.weight)
    assert not torch.allclose(tuned_text, original.text_model.embeddings.token_embedding.weight)

    board = evaluate(
        EvaluateParams(
            dataset=dataset, matchers=[MatcherRef(model_uri=f"models:/itm-matcher/{result['model_version']}")]
        )
    )
    assert board[0]["rsum"] == pytest.approx(result["test"]["rsum"], abs=1e-3)

    locked_text = dict(towers, text_encoder=ComponentParams(name="minilm"))
    with pytest.raises(ValueError, match="the text encoder 'minilm' is not trainable"):
        retrain(RetrainParams(dataset=dataset, training=training, **locked_text))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_unlocked_clip_towers_train_the_same_in_two_processes(clip_dir, tiny_shapes):
    """Fine-tuning unlocked towers data-parallel (two gloo processes under torchrun) gives the
    weights one process gives on the same global batches."""
    from itm_core import create
    from itm_core.encode.features import FeatureSplit
    from itm_core.models.distributed import train_in_processes
    from itm_core.models.matcher import Matcher
    from itm_core.models.training import ContrastiveTraining, LiveTower, train_contrastive

    def setup() -> tuple:
        towers = {m: create("encoder", "clip", modality=m, model=clip_dir) for m in ("image", "text")}
        splits = {s: tiny_shapes.split(s) for s in ("train", "val")}
        items = {s: {"image": [str(p) for p in d.image_paths()], "text": list(d.captions)} for s, d in splits.items()}
        live = {m: LiveTower(towers[m], items["train"][m], items["val"][m]) for m in towers}
        feats = {
            s: FeatureSplit(
                live["image"].all_features(items[s]["image"]),
                live["text"].all_features(items[s]["text"]),
                torch.tensor(splits[s].caption_image),
            )
            for s in splits
        }
        torch.manual_seed(0)
        matcher = Matcher(
            {"name": "clip"},
            {"name": "clip"},
            towers["image"].dim,
            towers["text"].dim,
            embed_dim=16,
            hidden_dim=0,
            dropout=0.0,
        )
        return matcher, feats, live

    # float32: bfloat16 rounds the slices' sums differently from the whole batch's
    config = ContrastiveTraining(epochs=2, batch_size=16, lr=1e-3, tower_lr=1e-3, patience=5, precision="fp32")
    m1, f1, live1 = setup()
    r1 = train_contrastive(m1, f1["train"], f1["val"], config, unlocked=live1)
    m2, f2, live2 = setup()
    epochs: list[int] = []
    r2 = train_in_processes(2, m2, f2["train"], f2["val"], config, live2, on_epoch=lambda e, _: epochs.append(e))
    assert epochs == [1, 2] and r2.best_epoch == r1.best_epoch
    assert [h["train_loss"] for h in r2.history] == pytest.approx([h["train_loss"] for h in r1.history], abs=1e-4)
    for m in ("image", "text"):
        before = create("encoder", "clip", modality=m, model=clip_dir).train_module().state_dict()
        one, two = live1[m].encoder.train_module().state_dict(), live2[m].encoder.train_module().state_dict()
        assert any(not torch.allclose(one[k], before[k]) for k in one), f"the {m} tower was fine-tuned"
        # attention key biases are left out: softmax ignores them, so their true gradient is zero and
        # AdamW turns the rounding noise in it into steps of lr size that differ with summation order
        differ = [k for k in one if not k.endswith("k_proj.bias") and not torch.allclose(one[k], two[k], atol=1e-4)]
        assert not differ, (m, differ, [float((one[k] - two[k]).abs().max()) for k in differ])
    for k, w in m1.state_dict().items():
        assert torch.allclose(w, m2.state_dict()[k], atol=1e-4), k
