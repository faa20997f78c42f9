"""Figures logged to MLflow: images with their captions or prompts."""

from __future__ import annotations

import textwrap
from typing import Any


def caption_grid(images: list[Any], texts: list[str], columns: int = 4) -> Any:
    """A matplotlib figure: each image with its text above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, text in zip(axes.flat, images, texts):
        ax.imshow(img)
        ax.set_title("\n".join(textwrap.wrap(text, 32)), fontsize=8)
    fig.tight_layout()
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
