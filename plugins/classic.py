"""Classic features from before deep learning: ``tfidf`` text and ``color-histogram`` image encoders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from itm_core import hookimpl
from itm_core.components import Encoder

if TYPE_CHECKING:
    import torch


class _VectorizerEncoder(Encoder):
    """A scikit-learn text vectorizer fitted on training captions; output dimension fixed at ``max_features``."""

    modality = "text"
    requires_fit = True
    label: ClassVar[str]  # the encoder's name in messages

    def __init__(self, vectorizer: Any, max_features: int) -> None:
        if max_features < 1:
            raise ValueError(f"{self.label}: max_features must be positive, got {max_features}")
        self.vectorizer = vectorizer
        self.dim = max_features
        self.fitted = False

    def fit(self, items: Sequence[str]) -> None:
        self.vectorizer.fit(list(items))
        self.fitted = True

    def get_state(self) -> Any:
        """The fitted vocabulary (and inverse document frequencies), as plain data."""
        if not self.fitted:
            return None
        state: dict[str, Any] = {"vocabulary": {term: int(i) for term, i in self.vectorizer.vocabulary_.items()}}
        if hasattr(self.vectorizer, "idf_"):
            state["idf"] = self.vectorizer.idf_.astype("float64")
        return state

    def set_state(self, state: Any) -> None:
        import numpy as np

        self.fitted = state is not None
        if state is None:
            return
        self.vectorizer.vocabulary_ = {term: int(i) for term, i in state["vocabulary"].items()}
        if "idf" in state:
            self.vectorizer.idf_ = np.asarray(state["idf"], dtype=np.float64)

    def encode(self, items: Sequence[str]) -> torch.Tensor:
        import torch

        if not self.fitted:
            raise RuntimeError(f"{self.label} must be fitted on training captions before encoding (call fit)")
        out = torch.zeros(len(items), self.dim)
        if len(items):
            m = self.vectorizer.transform(list(items)).toarray()
            out[:, : m.shape[1]] = torch.from_numpy(m).float()
        return out


class TfidfEncoder(_VectorizerEncoder):
    """TF-IDF over word n-grams (L2-normalised rows)."""

    label = "tfidf"

    def __init__(self, max_features: int = 2048, ngram_max: int = 2, sublinear_tf: bool = True) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        super().__init__(
            TfidfVectorizer(max_features=max_features, ngram_range=(1, ngram_max), sublinear_tf=sublinear_tf),
            max_features,
        )


class BagOfWords(_VectorizerEncoder):
    """Word counts (or presence with ``binary``), rows L2-normalised: the plain bag-of-words model."""

    label = "bow"

    def __init__(self, max_features: int = 1024, binary: bool = False, ngram_max: int = 1) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        super().__init__(
            CountVectorizer(max_features=max_features, binary=binary, ngram_range=(1, ngram_max)), max_features
        )

    def encode(self, items: Sequence[str]) -> torch.Tensor:
        import torch.nn.functional as F

        return F.normalize(super().encode(items), dim=-1)


class ColorHistogram(Encoder):
    """Joint RGB histograms (``bins`` per channel) over a ``grid`` x ``grid`` layout, each L1-normalised."""

    modality = "image"

    def __init__(self, bins: int = 6, grid: int = 2, image_size: int = 64) -> None:
        if not 2 <= bins <= 32:
            raise ValueError(f"color-histogram: bins must be between 2 and 32, got {bins}")
        if not 1 <= grid <= 8:
            raise ValueError(f"color-histogram: grid must be between 1 and 8, got {grid}")
        self.bins, self.grid, self.image_size = bins, grid, image_size
        self.dim = bins**3 * grid * grid

    def encode(self, items: Sequence) -> torch.Tensor:
        import numpy as np
        import torch

        out = np.zeros((len(items), self.dim), dtype=np.float32)
        cell = self.image_size // self.grid
        for n, img in enumerate(items):
            a = np.asarray(img.convert("RGB").resize((cell * self.grid,) * 2), dtype=np.int64) * self.bins // 256
            codes = a[..., 0] * self.bins**2 + a[..., 1] * self.bins + a[..., 2]
            hists = [
                np.bincount(codes[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].ravel(), minlength=self.bins**3)
                for r in range(self.grid)
                for c in range(self.grid)
            ]
            h = np.concatenate(hists).astype(np.float32)
            out[n] = h / (cell * cell)
        return torch.from_numpy(out)


@hookimpl
def register_encoders(register):
    register(
        "tfidf",
        TfidfEncoder,
        modality="text",
        dim="max_features",
        trainable=False,
        requires_fit=True,
        requires=["scikit-learn"],
        description="TF-IDF of word uni- and bi-grams (fitted on training captions)",
    )
    register(
        "bow",
        BagOfWords,
        modality="text",
        dim="max_features",
        trainable=False,
        requires_fit=True,
        requires=["scikit-learn"],
        description="Bag of words: word counts or presence (fitted on training captions)",
    )
    register(
        "color-histogram",
        ColorHistogram,
        modality="image",
        dim="bins^3 * grid^2",
        trainable=False,
        description="RGB colour histograms over a spatial grid",
    )
