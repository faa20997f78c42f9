"""The hub encoders at their real size with random weights: eager against compiled runtimes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Row,
    sample_captions,
    timed,
)


def _runtime_rows(
    module: Any, batches: list[tuple[Any, ...]], names: list[str], what: str, unit: str, note: str
) -> list[Row]:
    """``module`` eager against ONNX Runtime and ``torch.compile`` on the same ``batches`` (tuples of
    input tensors named ``names``, batch first), building excluded: one row per runtime."""
    import torch

    from itm_core.encode.runtime import OnnxModule

    count = sum(len(b[0]) for b in batches)
    module = module.eval()
    with torch.inference_mode():
        module(*batches[0])  # warm-up
        t_eager, eager = timed(lambda: torch.cat([module(*b) for b in batches]))
        dynamic = {**{n: {0: "batch"} for n in names}, "out": {0: "batch"}}
        built: dict[str, Any] = {}
        t_build = {
            "onnxruntime": timed(lambda: built.update(onnxruntime=OnnxModule(module, batches[0], names, dynamic)))[0]
        }
        compiled = torch.compile(module, dynamic=False)
        t_build["torch"] = timed(lambda: compiled(*batches[0]))[0]
        built["torch"] = compiled
        rows = []
        for runtime, label in (("onnxruntime", "ONNX Runtime"), ("torch", "torch.compile")):
            run = built[runtime]
            same = [
                b for b in batches if runtime == "onnxruntime" or len(b[0]) == len(batches[0][0])
            ]  # compiled for one batch size
            t_fast, fast = timed(lambda: torch.cat([run(*b) for b in same]))
            n_fast = sum(len(b[0]) for b in same)
            rows.append(
                {
                    "what": f"{what}, {label}, {unit}/s",
                    "reference": "the same model eager, same batches",
                    "value": n_fast / t_fast,
                    "ref_value": count / t_eager,
                    "ratio": (n_fast / t_fast) / (count / t_eager),
                    "target": "measured",
                    "note": f"{n_fast} {unit} in batches of {len(batches[0][0])}; building took {t_build[runtime]:.1f} "
                    "s; "
                    f"largest difference {float((fast - eager[: len(fast)]).abs().max()):.1e}; {note}",
                }
            )
    return rows


def bench_hub_encoders(paths: list[str], home: Path, full_size: bool = True) -> list[Row]:
    """The hub towers at the size of their default models, random weights built locally (speed does not
    depend on the weights; nothing is downloaded): the ``clip`` image tower (openai/clip-vit-base-patch32:
    ViT-B/32), ``hf-image`` (google/vit-base-patch16-224-in21k: ViT-B/16) and ``hf-text``
    (bert-base-uncased: BERT-base), each eager against ONNX Runtime and ``torch.compile`` on the bare
    model with the plugin's own preprocessing done beforehand. Measured, not used: through the pipeline
    neither beats eager by enough to repay building, so these towers stay eager. ``blip-itm`` is a
    ViT-B/16 and a BERT-base joined by cross-attention: its parts are the rows measured here."""
    import torch
    from PIL import Image
    from transformers import (
        BertConfig,
        BertModel,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    from itm_core import create
    from plugins.hub import features
    from plugins.tiny_hub import bert, clip, tokenizer, vit

    def folder(name: str, build_full: Callable[[Path], None], build_tiny: Callable[[Path], Any]) -> str:
        path = home / (name if full_size else f"{name}-tiny")
        if not path.is_dir():
            torch.manual_seed(0)
            build_full(path) if full_size else build_tiny(path)
        return str(path)

    def full_clip(path: Path) -> None:
        tok = tokenizer(path, "clip", max_length=77)
        config = CLIPConfig(
            text_config={
                "vocab_size": len(tok),
                "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id,
                "pad_token_id": tok.pad_token_id,
            },
            vision_config={"image_size": 224, "patch_size": 32},
            projection_dim=512,
        )
        CLIPModel(config).save_pretrained(path)
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)

    def full_vit(path: Path) -> None:
        ViTModel(ViTConfig(image_size=224, patch_size=16)).save_pretrained(path)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(path)

    def full_bert(path: Path) -> None:
        tok = tokenizer(path, "bert", max_length=128)
        BertModel(BertConfig(vocab_size=max(len(tok), 30522))).save_pretrained(path)

    size = "real size, random weights" if full_size else "tiny (--quick)"
    images = [Image.open(p).convert("RGB") for p in paths]
    rows: list[Row] = []

    enc = create("encoder", "clip", modality="image", model=folder("clip-vit-b-32", full_clip, clip)).unwrapped

    class ClipImage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = enc.model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return features(self.model.get_image_features(pixel_values=pixel_values))

    batches = [(enc.inputs(images[s : s + 32])["pixel_values"],) for s in range(0, len(images), 32)]
    rows += _runtime_rows(
        ClipImage(),
        batches,
        ["pixel_values"],
        "clip image tower (ViT-B/32, 224 px)" if full_size else "clip image tower (tiny)",
        "images",
        size,
    )

    vit_enc = create("encoder", "hf-image", model=folder("vit-b-16", full_vit, vit)).unwrapped

    class VitImage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = vit_enc.model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).pooler_output

    few = images[: max(8, len(images) // 2)]  # ViT-B/16 costs about 4x ViT-B/32 per image
    batches = [
        (vit_enc.processor(images=few[s : s + 16], return_tensors="pt")["pixel_values"],)
        for s in range(0, len(few), 16)
    ]
    rows += _runtime_rows(
        VitImage(),
        batches,
        ["pixel_values"],
        "hf-image (ViT-B/16, 224 px)" if full_size else "hf-image (tiny)",
        "images",
        size,
    )

    text_enc = create("encoder", "hf-text", model=folder("bert-base", full_bert, bert)).unwrapped

    class BertText(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = text_enc.model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).float()
            return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    texts = sample_captions(min(8 * 48, 4 * len(paths)))  # at most eight rounds of the 48 captions
    batches = []
    for s in range(0, len(texts), 64):
        tokens = text_enc.tokenizer(
            texts[s : s + 64], padding="max_length", truncation=True, max_length=16, return_tensors="pt"
        )
        batches.append((tokens["input_ids"], tokens["attention_mask"]))
    rows += _runtime_rows(
        BertText(),
        batches,
        ["input_ids", "attention_mask"],
        "hf-text (BERT-base, 16 tokens)" if full_size else "hf-text (tiny)",
        "captions",
        size,
    )
    return rows
