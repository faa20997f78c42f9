"""What one condition vector carries of a shapes scene: the token reader against the pooled sentence feature."""

from __future__ import annotations

from benchmarks.common import (
    Row,
    timed,
)


def bench_condition(n: int, epochs: int) -> list[Row]:
    """How much of a ``shapes`` scene the text condition of the cvae and the GAN carries: a probe reads
    each object's colour, shape and size (and "no second object") from held-out captions through
    ``text_condition: pooled`` (an MLP on pooled MiniLM) against ``tokens`` (a TokenReader over its
    token states), each trained on the same captions for the same epochs."""
    import random

    import torch
    import torch.nn.functional as F

    from itm_core import create
    from itm_core.models.text_to_image.base import TextCondition, TokenCondition
    from plugins.shapes import COLORS, SHAPES, SIZES, describe, random_scene

    rng = random.Random(0)
    scenes = [random_scene(rng, 0.5) for _ in range(n)]
    texts = [describe(s, rng) for s in scenes]
    vocab = [list(COLORS), list(SHAPES), list(SIZES)]
    # slot 0 the left (or only) object, slot 1 the right one; each attribute has a "none" class
    y = torch.tensor(
        [
            [
                vocab[a].index(getattr(s.objects[k], name)) if k < len(s.objects) else len(vocab[a])
                for k in range(2)
                for a, name in enumerate(("color", "shape", "size"))
            ]
            for s in scenes
        ]
    )
    classes = [len(v) + 1 for v in vocab] * 2
    encoder = create("encoder", "minilm", max_length=32)
    seconds, (pooled, (tokens, mask)) = timed(
        lambda: (
            torch.cat([encoder.encode(texts[s : s + 256]) for s in range(0, n, 256)]),
            [torch.cat(t) for t in zip(*(encoder.encode_tokens(texts[s : s + 256]) for s in range(0, n, 256)))],
        )
    )
    train, test = torch.arange(n * 5 // 6), torch.arange(n * 5 // 6, n)

    def probe(condition: torch.nn.Module, x: torch.Tensor, m: torch.Tensor | None) -> tuple[float, list[float]]:
        torch.manual_seed(0)
        condition.set_text_statistics(x[train], None if m is None else m[train])
        heads = torch.nn.ModuleList(torch.nn.Linear(128, c) for c in classes)
        optimiser = torch.optim.AdamW([*condition.parameters(), *heads.parameters()], lr=1e-3)

        def logits(rows: torch.Tensor) -> list[torch.Tensor]:
            h = F.silu(condition(x[rows], None if m is None else m[rows]))
            return [head(h) for head in heads]

        for _ in range(epochs):
            order = train[torch.randperm(len(train))]
            for s in range(0, len(order), 128):
                rows = order[s : s + 128]
                loss = sum(F.cross_entropy(out, y[rows, k]) for k, out in enumerate(logits(rows)))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            right = torch.stack([out.argmax(1) == y[test, k] for k, out in enumerate(logits(test))])
        return float(right.all(0).float().mean()), right.float().mean(1).tolist()

    pooled_all, pooled_each = probe(TextCondition(pooled.shape[1], 128), pooled, None)
    tokens_all, tokens_each = probe(TokenCondition(tokens.shape[2], 128, 2, 4), tokens.float(), mask)

    def each(values: list[float]) -> str:
        return ", ".join(
            f"{slot} {name} {values[3 * k + a]:.3f}"
            for k, slot in enumerate(("left", "right"))
            for a, name in enumerate(("colour", "shape", "size"))
        )

    return [
        {
            "what": "shapes scenes read whole from one condition vector per held-out caption, text_condition tokens "
            "(share)",
            "value": tokens_all,
            "reference": "text_condition pooled (MiniLM's mean-pooled embedding)",
            "ref_value": pooled_all,
            "ratio": tokens_all / max(pooled_all, 1e-9),
            "target": "measured",
            "note": f"{len(train)} training and {len(test)} held-out captions, {epochs} epochs each; per attribute, "
            f"tokens: {each(tokens_each)}; "
            f"pooled: {each(pooled_each)}; encoding the captions took {seconds:.0f} s",
        }
    ]
