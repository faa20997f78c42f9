"""Figures logged to MLflow: images with their captions or prompts."""

from __future__ import annotations

import textwrap
from typing import Any


def caption_grid(images: list[Any], texts: list[str], columns: int = 4) -> Any:
    """A matplotlib figure: each image with its text above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, min(columns, len(images)))  # two images make a figure two cells wide, not four
    rows = max(1, -(-len(images) // columns))
    titles = ["\n".join(textwrap.wrap(str(text), 32)[:6]) for text in texts]  # at most six lines above each image
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3 * columns, (3.2 + 0.16 * lines) * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
    return fig


def log_grid(images: list[Any], texts: list[str], artifact_file: str) -> None:
    """``caption_grid`` as a PNG artifact of the active MLflow run."""
    import matplotlib.pyplot as plt
    import mlflow

    fig = caption_grid(images, texts)
    try:
        mlflow.log_figure(fig, artifact_file)
    finally:
        plt.close(fig)


RECALL_KS = (1, 2, 3, 5, 10, 20, 50)


def recall_at_k_figure(curves: dict[str, Any], ks: tuple[int, ...] = RECALL_KS) -> Any:
    """Recall@K against K, image-to-text and text-to-image side by side; ``curves`` maps a label to
    its :class:`itm_core.models.retrieval.Ranks`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, direction, title in ((axes[0], "i2t", "image to text"), (axes[1], "t2i", "text to image")):
        for label, r in curves.items():
            ranks = getattr(r, direction).float()
            ax.plot(ks, [float((ranks <= k).float().mean()) for k in ks], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_title(f"recall@K, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall")
    axes[0].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def retrieval_examples_figure(queries: list[str], results: list[list[Any]], hits: list[list[bool]]) -> Any:
    """One row per text query: the query, then its top retrieved images framed green (hit) or red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max((len(r) for r in results), default=1)
    fig, axes = plt.subplots(
        len(queries), columns + 1, figsize=(2.2 * (columns + 1), 2.3 * len(queries)), squeeze=False
    )
    for row, (query, images, marks) in enumerate(zip(queries, results, hits)):
        axes[row, 0].axis("off")
        axes[row, 0].text(0, 0.5, "\n".join(textwrap.wrap(query, 24)), fontsize=8, va="center")
        for col in range(columns):
            ax = axes[row, col + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(images):
                ax.axis("off")
                continue
            ax.imshow(images[col])
            colour = "tab:green" if marks[col] else "tab:red"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            ax.set_title(f"#{col + 1} {'hit' if marks[col] else 'miss'}", fontsize=8, color=colour)
    fig.tight_layout()
    return fig
