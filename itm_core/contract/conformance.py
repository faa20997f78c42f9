"""The rules of the conformance kit, one set per component kind, and the sample inputs they use:
outputs of the right shape, dtype and finiteness, the same results for the same input, results that
do not depend on the batch size, empty and single-item batches, odd inputs (grayscale and RGBA
images, very long or empty text), and the same results on an accelerator when there is one.
:mod:`itm_core.contract.testing` runs them."""

from __future__ import annotations

import inspect
import math
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from itm_core.contract.registry import spec
from itm_core.contract.samples import ODD_TEXTS, SAMPLE_TEXTS, odd_images, sample_images, tiny_scorer

ATOL, RTOL = 1e-4, 1e-3


class RuleFailed(AssertionError):
    """A conformance rule that did not hold."""


class RuleSkipped(Exception):
    """A rule that does not apply here (no accelerator, a task without sample inputs)."""


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise RuleFailed(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if not torch.allclose(a.float().cpu(), b.float().cpu(), atol=ATOL, rtol=RTOL):
        diff = float((a.float().cpu() - b.float().cpu()).abs().max())
        raise RuleFailed(f"{what}: results differ by up to {diff:.3g} (tolerance {ATOL})")


def _accepts(factory: Callable[..., Any], option: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _accelerator() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


# --- rules per kind --------------------------------------------------------------------------------


def _encoder_rules(c: Any, build: Callable[..., Any]) -> dict[str, Callable[[], str | None]]:
    items = sample_images() if c.modality == "image" else SAMPLE_TEXTS
    odd = odd_images() if c.modality == "image" else ODD_TEXTS

    def fit(enc: Any) -> Any:
        if getattr(enc, "requires_fit", False):
            enc.fit([*SAMPLE_TEXTS, "a yellow diamond", "an orange cross"] if c.modality == "text" else sample_images())
        return enc

    fit(c)

    def declares() -> str:
        if not isinstance(c.dim, int) or c.dim < 1:
            raise RuleFailed(f"dim must be a positive int, got {c.dim!r}")
        return f"modality {c.modality}, dim {c.dim}"

    def output() -> str:
        c.encode(items)
        return f"({len(items)}, {c.dim}) float, finite"

    def empty() -> None:
        c.encode([])

    def single() -> None:
        c.encode(items[:1])

    def deterministic() -> None:
        _close(c.encode(items), c.encode(items), "the same batch encoded twice")

    def batch_independent() -> None:
        _close(c.encode(items), torch.cat([c.encode([x]) for x in items]), "a batch vs. one item at a time")

    def odd_inputs() -> str:
        c.encode(odd)
        return (
            "grayscale, RGBA, palette, tiny and wide images"
            if c.modality == "image"
            else "empty, blank, very long and non-ASCII text"
        )

    def state_roundtrip() -> str:
        if not getattr(c, "requires_fit", False):
            raise RuleSkipped("the encoder has no fitted state")
        from itm_core.contract.state import StateFormatError, load_state, save_state

        with tempfile.TemporaryDirectory() as folder:
            try:  # the state goes to disk as data (JSON + safetensors), never as a pickle
                save_state(c.get_state(), folder, "state")
            except StateFormatError as exc:
                raise RuleFailed(f"get_state() must return plain data: {exc}") from None
            other = build()
            other.set_state(load_state(folder, "state"))
        _close(c.encode(items), other.encode(items), "a fresh instance with the state saved to disk and read back")
        return "get_state/set_state reproduce the outputs through a saved file"

    def token_features() -> str:
        if not hasattr(c, "encode_tokens"):
            raise RuleSkipped("the encoder gives no token-level features")
        tokens, mask = c.encode_tokens(items)
        for n, item in enumerate(items):
            one, one_mask = c.encode_tokens([item])
            if not torch.equal(one_mask[0], mask[n]):
                raise RuleFailed("a token mask depends on the rest of the batch")
            _close(one[0][one_mask[0]], tokens[n][mask[n]], "token features of a batch vs. one item at a time")
        c.encode_tokens([])
        return f"(N, {tokens.shape[1]}, {c.token_dim}) with masks, batch-size independent"

    def device() -> str:
        accel = _accelerator()
        if accel is None:
            raise RuleSkipped("no accelerator on this machine")
        if not _accepts(spec("encoder", c.name).factory, "device"):
            raise RuleSkipped("the factory takes no 'device' option")
        moved = fit(build(device=accel))
        if getattr(c, "requires_fit", False):
            moved.set_state(c.get_state())
        _close(moved.encode(items), c.encode(items), f"outputs on {accel} vs. cpu")
        return f"same results on {accel}"

    return {
        "declares modality and dim": declares,
        "output contract": output,
        "empty batch": empty,
        "single item": single,
        "deterministic": deterministic,
        "batch-size independent": batch_independent,
        "odd inputs": odd_inputs,
        "fitted state round-trip": state_roundtrip,
        "token features": token_features,
        "device": device,
    }


def _similarity_rules(c: Any, build: Callable[..., Any]) -> dict[str, Callable[[], str | None]]:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g)

    def output() -> None:
        c.score(a, b)

    def pairwise() -> None:
        if not hasattr(c, "pairwise"):
            raise RuleSkipped("no pairwise method (the core falls back to the matrix diagonal)")
        _close(c.pairwise(a, b[:3]), c.score(a, b[:3]).diagonal(), "pairwise vs. the score matrix diagonal")

    def empty() -> None:
        c.score(a[:0], b)

    def deterministic() -> None:
        _close(c.score(a, b), c.score(a, b), "the same inputs scored twice")

    def chunk_independent() -> None:
        _close(c.score(a, b), torch.cat([c.score(a, b[:2]), c.score(a, b[2:])], 1), "the gallery scored in two chunks")

    def zero_vectors() -> None:
        c.score(torch.zeros(2, 8), b)

    return {
        "output contract": output,
        "pairwise matches score": pairwise,
        "empty set": empty,
        "deterministic": deterministic,
        "chunk independent": chunk_independent,
        "zero vectors": zero_vectors,
    }


def _fusion_rules(c: Any, build: Callable[..., Any]) -> dict[str, Callable[[], str | None]]:
    g = torch.Generator().manual_seed(0)
    module = c.unwrapped if isinstance(c.unwrapped, torch.nn.Module) else None
    image_mask: torch.Tensor | None
    text_mask: torch.Tensor | None
    if getattr(c, "inputs", "pooled") == "tokens":
        image, text = torch.randn(4, 5, int(c.image_dim), generator=g), torch.randn(4, 7, int(c.text_dim), generator=g)
        image_mask = torch.ones(4, 5, dtype=torch.bool)
        text_mask = torch.arange(7).expand(4, 7) < torch.tensor([[7], [3], [5], [1]])  # padded texts of several lengths
    else:
        image, text = torch.randn(4, int(c.image_dim), generator=g), torch.randn(4, int(c.text_dim), generator=g)
        image_mask = text_mask = None

    def fuse(rows: slice | list[int], device: str = "cpu") -> torch.Tensor:
        masks = (
            {"image_mask": image_mask[rows].to(device), "text_mask": text_mask[rows].to(device)}
            if image_mask is not None and text_mask is not None
            else {}
        )
        return c.fuse(image[rows].to(device), text[rows].to(device), **masks)

    def output() -> str:
        if module is not None:
            module.eval()
        fuse(slice(None))
        return f"({len(image)}, {c.dim}) from {getattr(c, 'inputs', 'pooled')} inputs"

    def deterministic() -> None:
        with torch.no_grad():
            _close(fuse(slice(None)), fuse(slice(None)), "the same inputs fused twice (eval mode)")

    def batch_independent() -> None:
        with torch.no_grad():
            _close(
                fuse(slice(None)),
                torch.cat([fuse(slice(i, i + 1)) for i in range(4)]),
                "a batch vs. one item at a time",
            )

    def empty() -> None:
        fuse(slice(0, 0))

    def factored() -> str:
        parts = ("embed_image", "embed_text", "combine")
        if not all(callable(getattr(c.unwrapped, m, None)) for m in parts):
            raise RuleSkipped("not factored (heads fuse every pair whole)")
        if module is not None:
            module.eval()
        masks = {} if image_mask is None else {"image_mask": image_mask, "text_mask": text_mask}
        with torch.no_grad():
            image_part, text_part = c.embed_image(image), c.embed_text(text)
            _close(c.combine(image_part, text_part, **masks), fuse(slice(None)), "combine of the parts vs. fuse")
            _close(c.embed_image(image[1:3]), image_part[1:3], "embed_image of some rows vs. of all")
            _close(c.embed_text(text[1:3]), text_part[1:3], "embed_text of some rows vs. of all")
        return "combine(embed_image, embed_text) equals fuse; each part row by row"

    def trainable() -> str:
        if module is None or not any(p.requires_grad for p in module.parameters()):
            raise RuleSkipped("no trainable parameters")
        module.train()
        module.zero_grad()
        fuse(slice(None)).pow(2).sum().backward()
        if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()):
            raise RuleFailed("no parameter receives a gradient from the fused output")
        module.eval()
        return "gradients reach the parameters"

    def device() -> str:
        accel = _accelerator()
        if accel is None:
            raise RuleSkipped("no accelerator on this machine")
        if module is None:
            raise RuleSkipped("not a torch module")
        with torch.no_grad():
            expected = fuse(slice(None))
            module.to(accel)
            try:
                _close(fuse(slice(None), accel), expected, f"outputs on {accel} vs. cpu")
            finally:
                module.to("cpu")
        return f"same results on {accel}"

    return {
        "output contract": output,
        "deterministic": deterministic,
        "batch-size independent": batch_independent,
        "empty batch": empty,
        "factored": factored,
        "trainable": trainable,
        "device": device,
    }


def _generator_rules(c: Any, build: Callable[..., Any]) -> dict[str, Callable[[], str | None]]:
    to_text = c.task == "image-to-text"
    inputs = sample_images()[:2] if to_text else SAMPLE_TEXTS[:2]

    def output() -> str:
        out = c.generate(inputs)
        if to_text and not all(isinstance(o, str) for o in out):
            raise RuleFailed(f"an image-to-text generator must return strings, got {[type(o).__name__ for o in out]}")
        if not to_text and not all(isinstance(o, Image.Image) for o in out):
            raise RuleFailed(f"a text-to-image generator must return PIL images, got {[type(o).__name__ for o in out]}")
        return f"{len(out)} {'captions' if to_text else 'images'}"

    def empty() -> None:
        if c.generate([]) != []:
            raise RuleFailed("an empty input list must give an empty list")

    def deterministic() -> None:
        first, second = c.generate(inputs), c.generate(inputs)
        if to_text and first != second:
            raise RuleFailed(f"the same inputs gave {first!r} then {second!r}")
        if not to_text:
            import numpy as np

            if any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first, second)):
                raise RuleFailed("the same prompts gave different images (fix the seed)")

    def odd_inputs() -> str | None:
        if to_text:
            c.generate(odd_images()[:3])
            return None
        refused = []
        for prompt in ("", "word " * 300):  # each drawn, or refused with a ValueError that says which prompt and why
            try:
                c.generate([prompt])
            except ValueError as exc:
                if "prompt" not in str(exc):
                    raise RuleFailed(
                        f"refused the prompt {prompt[:20]!r} with a message that does not say it is the prompt: {exc}"
                    ) from None
                refused.append(str(exc))
        return "refused with: " + " | ".join(refused) if refused else None

    return {"output contract": output, "empty input": empty, "deterministic": deterministic, "odd inputs": odd_inputs}


def _metric_inputs(task: str) -> dict[str, Any]:
    if task == "retrieval":
        g = torch.Generator().manual_seed(0)
        image = torch.randn(4, 8, generator=g)
        return {
            "image_emb": image,
            "text_emb": image.repeat_interleave(2, 0) + 0.1 * torch.randn(8, 8, generator=g),
            "caption_image": [i // 2 for i in range(8)],
        }
    if task == "captioning":
        return {
            "predictions": ["a red circle", "two blue squares", ""],
            "references": [["a red circle", "a crimson disc"], ["two squares"], ["a star"]],
            "images": sample_images()[:3],
        }
    if task == "text-to-image":
        images = sample_images()
        return {
            "images": images[:3],
            "prompts": [
                "a red circle on the left",
                "a blue square to the left of a green star",
                "a small green star in the middle",
            ],
            "reference_images": images[-3:],
            "distractors": list(SAMPLE_TEXTS),
        }
    raise RuleSkipped(f"the kit has no sample inputs for metric task {task!r}; test it in the plugin's own suite")


def _metric_rules(c: Any, build: Callable[..., Any]) -> dict[str, Callable[[], str | None]]:
    task = str(getattr(c, "task", "") or "")

    def declares() -> str:
        if not task:
            raise RuleFailed("a metric must declare its 'task' (which inputs compute() takes)")
        return f"task {task!r}"

    def output() -> str:
        out = c.compute(**_metric_inputs(task))
        return ", ".join(sorted(out))

    def deterministic() -> None:
        inputs = _metric_inputs(task)
        if c.compute(**inputs) != c.compute(**inputs):
            raise RuleFailed("the same inputs gave different values")

    def units() -> str | None:
        inputs = _metric_inputs(task)
        try:
            scores = c.units(**inputs)
        except NotImplementedError:
            raise RuleSkipped(
                "no per-unit scores (units() not implemented): no intervals or paired promotion"
            ) from None
        values, n = c.compute(**inputs), len(next(iter(inputs.values())))
        if len(scores) != n:
            raise RuleFailed(f"units() gave {len(scores)} units for {n} inputs")
        wrong = {
            k: (scores.value(k), values.get(k))
            for k in scores.names()
            if k not in values or not math.isclose(scores.value(k), values[k], rel_tol=1e-5, abs_tol=1e-6)
        }
        if wrong:
            raise RuleFailed(f"units() and compute() disagree (units, compute): {wrong}")
        return f"{len(scores)} units give {', '.join(scores.names())}"

    return {"declares task": declares, "output contract": output, "deterministic": deterministic, "units": units}


def _dataset_rules(c: Any, build: Callable[..., Any]) -> dict[str, Callable[[], str | None]]:
    from itm_core.data import check_images

    loaded: dict[str, Any] = {}

    def output() -> str:
        loaded["data"] = data = c.load()
        return f"{len(data)} images, {len(data.captions)} captions, splits {', '.join(data.splits)}"

    def data() -> Any:
        if "data" not in loaded:
            raise RuleSkipped("load() failed")
        return loaded["data"]

    def non_empty() -> None:
        d = data()
        if not len(d) or not d.captions:
            raise RuleFailed("the dataset has no images or no captions")
        without = sorted(set(range(len(d))) - set(d.caption_image))
        if without:
            raise RuleFailed(f"{len(without)} images have no caption, e.g. {d.images[without[0]]!r}")

    def images_readable() -> str:
        d = data()
        sample = d.subset(range(min(len(d), 16)))
        _, skipped = check_images(sample, on_error="skip")
        if skipped:
            raise RuleFailed(f"{skipped[0].reason}")
        return f"first {len(sample)} images decode inside the root"

    def deterministic() -> None:
        if c.load().fingerprint() != data().fingerprint():
            raise RuleFailed("two loads gave different pairs")

    return {
        "output contract": output,
        "non-empty, every image captioned": non_empty,
        "images readable": images_readable,
        "deterministic": deterministic,
    }


def _explainer_rules(c: Any, build: Callable[..., Any]) -> dict[str, Callable[[], str | None]]:
    import numpy as np

    scorer = tiny_scorer()
    image, text = sample_images()[1], SAMPLE_TEXTS[2]

    def declares() -> str:
        modalities = tuple(getattr(c, "modalities", ()))
        if not modalities or set(modalities) - {"image", "text"}:
            raise RuleFailed(f"an explainer must declare modalities, a subset of ('image', 'text'); got {modalities!r}")
        return f"modalities {', '.join(modalities)}"

    def output() -> str:
        out = c.explain(scorer, image, text)
        shown = [
            f"heat {out.heat.shape}" if out.heat is not None else "",
            f"{len(out.word_scores)} word scores" if out.word_scores is not None else "",
        ]
        return ", ".join(x for x in shown if x)

    def deterministic() -> None:
        a, b = c.explain(scorer, image, text), c.explain(scorer, image, text)
        for what, x, y in (("heat map", a.heat, b.heat), ("word scores", a.word_scores, b.word_scores)):
            if (x is None) != (y is None) or (
                x is not None and not np.allclose(np.asarray(x), np.asarray(y), atol=ATOL)
            ):
                raise RuleFailed(f"the same pair gave different {what}")

    def odd_inputs() -> None:
        for img in odd_images()[:2]:
            c.explain(scorer, img, "circle")  # one word, grayscale and RGBA images

    return {
        "declares modalities": declares,
        "output contract": output,
        "deterministic": deterministic,
        "odd inputs": odd_inputs,
    }


RULES = {
    "encoder": _encoder_rules,
    "similarity": _similarity_rules,
    "fusion": _fusion_rules,
    "generator": _generator_rules,
    "metric": _metric_rules,
    "dataset": _dataset_rules,
    "explainer": _explainer_rules,
}
