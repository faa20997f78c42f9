"""Tiny hub-style models, built from configs and saved with ``save_pretrained``, for offline tests.

They go through the same ``from_pretrained`` path a user's real checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "and",
    "to",
    "on",
    "in",
    "at",
    "is",
    "there",
    "picture",
    "two",
    "shapes",
    "shape",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "middle",
    "side",
    "edge",
    "next",
    "its",
    "placed",
    "colored",
    "size",
    "small",
    "little",
    "medium",
    "medium-sized",
    "large",
    "big",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
    "cat",
    "dog",
    "tax",
    "law",
]


def tokenizer(folder: Path, style: str = "bert", max_length: int = 32):
    """A word-level fast tokenizer; ``bert`` adds [CLS] ... [SEP], ``clip`` adds <start> ... <end>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
        if style == "bert"
        else ["<pad>", "<unk>", "<start>", "<end>"]
    )
    vocab = {t: i for i, t in enumerate(specials + WORDS + [",", ":", "."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    first, last = (specials[2], specials[3])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}", special_tokens=[(first, vocab[first]), (last, vocab[last])]
    )
    kwargs = dict(pad_token=specials[0], unk_token=specials[1])
    kwargs.update(
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]"
    ) if style == "bert" else kwargs.update(bos_token="<start>", eos_token="<end>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **kwargs)
    fast.save_pretrained(folder)
    return fast


def clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = tokenizer(folder, "clip")
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    tok = tokenizer(folder, "bert")
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    ).save_pretrained(folder)
    return folder


def vit(folder: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    ViTModel(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
        )
    ).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _blip_config(tok):
    from transformers import BlipConfig

    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        encoder_hidden_size=32,
        bos_token_id=tok.bos_token_id,
        sep_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
    )
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=16, projection_dim=16)


def _blip_images(folder: Path) -> None:
    from transformers import BlipImageProcessor

    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def _blip(folder: Path, model_class: type) -> Path:
    tok = tokenizer(folder, "bert")
    torch.manual_seed(0)
    model_class(_blip_config(tok)).save_pretrained(folder)
    _blip_images(folder)
    return folder


def blip_itm(folder: Path) -> Path:
    from transformers import BlipForImageTextRetrieval

    return _blip(folder, BlipForImageTextRetrieval)


def blip_caption(folder: Path) -> Path:
    from transformers import BlipForConditionalGeneration

    return _blip(folder, BlipForConditionalGeneration)


def vit_gpt2(folder: Path) -> Path:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    tok = tokenizer(folder, "clip")
    torch.manual_seed(0)
    encoder = ViTModel(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
        )
    )
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            add_cross_attention=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = tok.bos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.generation_config.decoder_start_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def stable_diffusion(folder: Path) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok_dir = folder / "_tok"
    tok = tokenizer(tok_dir, "clip", max_length=16)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)  # type: ignore[attr-defined]  # diffusers declares it on a mixin the stubs miss
    return folder
