"""The encoding pipeline against a plain eager loop (eager, torch.compile, ONNX Runtime), and the text encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import (
    Row,
    sample_captions,
    shapes_dataset,
    timed,
)
from benchmarks.hub_encoders import bench_hub_encoders


def plain_encoding_loop(model: Any, paths: list[str], batch: int = 64, size: int = 128) -> Any:
    """The reference: decode serially, eager contiguous model, the encoder's own pooling."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    out = []
    with torch.inference_mode():
        for s in range(0, len(paths), batch):
            arrays = [
                np.asarray(Image.open(p).convert("RGB").resize((size, size)), dtype=np.float32)
                for p in paths[s : s + batch]
            ]
            x = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
            fmap = model.extract_features(x)
            out.append(torch.cat([fmap.mean(dim=(2, 3)), F.adaptive_avg_pool2d(fmap, 2).flatten(1)], dim=1))
    return torch.cat(out)


def bench_encoding(n: int, home: Path, repeats: int = 2) -> list[Row]:
    """The encoding pipeline (eager, torch.compile, ONNX Runtime) against a plain eager loop on the
    same images, each the best of ``repeats`` interleaved runs (this VM's speed drifts by tens of
    per cent between minutes); building the compiled forms is timed once, apart."""
    import copy

    import torch

    from itm_core import create
    from itm_core.encode.embed import EncodeOptions, encode
    from itm_core.encode.runtime import onnxruntime_installed

    data = shapes_dataset(n, 16, home).split("train")
    paths = [str(p) for p in data.image_paths()][:n]
    enc = create("encoder", "efficientnet-lite0")
    reference_model = copy.deepcopy(enc.unwrapped.model).to(memory_format=torch.contiguous_format)
    plain_encoding_loop(reference_model, paths[:64])  # warm-up
    runtimes = ["off", "torch"] + (["onnxruntime"] if onnxruntime_installed() else [])
    encoders, built = {}, {}
    for runtime in runtimes:
        encoders[runtime] = create("encoder", "efficientnet-lite0")
        built[runtime], _ = timed(
            lambda: encode(encoders[runtime], paths[:128], options=EncodeOptions(compile=runtime))
        )  # build + verify
    best: dict[str, float] = {}
    out: dict[str, Any] = {}
    for _ in range(repeats):
        t, out["plain"] = timed(lambda: plain_encoding_loop(reference_model, paths))
        best["plain"] = min(best.get("plain", float("inf")), t)
        for runtime in runtimes:
            t, out[runtime] = timed(lambda: encode(encoders[runtime], paths, options=EncodeOptions(compile=runtime)))
            best[runtime] = min(best.get(runtime, float("inf")), t)
    labels = {
        "off": "eager (channels-last, loader workers handing over uint8 pixels)",
        "torch": "torch.compile",
        "onnxruntime": "ONNX Runtime",
    }
    rows = []
    for runtime in runtimes:
        row = {
            "what": f"encoding pipeline, {labels[runtime]}, images/s"
            + (" (building excluded)" if runtime != "off" else ""),
            "reference": "plain eager torch loop, serial decoding",
            "value": n / best[runtime],
            "ref_value": n / best["plain"],
            "ratio": best["plain"] / best[runtime],
            "target": ">= 2.0x",
            "note": f"{n} images, best of {repeats} interleaved runs; largest difference from the plain loop's "
            f"embeddings {float((out[runtime] - out['plain']).abs().max()):.1e}",
        }
        if runtime != "off":
            row["note"] += f"; building it and checking it against eager on 128 images took {built[runtime]:.1f} s once"
        rows.append(row)
    rows += bench_text_encoders(min(n * 5, 2048))
    rows += bench_hub_encoders(paths[: max(16, n // 8)], home, full_size=n >= 1000)
    return rows


def bench_text_encoders(n: int) -> list[Row]:
    """MiniLM eager against ``torch.compile`` on fixed-length batches (measured, not used by default)."""
    import torch

    from itm_core import create

    enc = create("encoder", "minilm").unwrapped
    texts = sample_captions(n)
    batch = enc.tokenizer(texts[:64], padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode():
        enc.model(**batch)
        t_eager, _ = timed(
            lambda: [
                enc.model(
                    **enc.tokenizer(
                        texts[s : s + 64], padding="max_length", truncation=True, max_length=16, return_tensors="pt"
                    )
                )
                for s in range(0, n - 63, 64)
            ]
        )
        compiled = torch.compile(enc.model, dynamic=False)
        t_compile, _ = timed(lambda: compiled(**batch))
        t_comp, _ = timed(
            lambda: [
                compiled(
                    **enc.tokenizer(
                        texts[s : s + 64], padding="max_length", truncation=True, max_length=16, return_tensors="pt"
                    )
                )
                for s in range(0, n - 63, 64)
            ]
        )
    done = (n // 64) * 64
    return [
        {
            "what": "minilm, compiled, captions/s (16 tokens, batch 64)",
            "reference": "minilm eager, same batches",
            "value": done / t_comp,
            "ref_value": done / t_eager,
            "ratio": t_eager / t_comp,
            "target": "measured",
            "note": f"compile took {t_compile:.1f} s",
        }
    ]
