"""``bovw``: a bag of visual words over ORB or SIFT keypoint descriptors (OpenCV), with a k-means vocabulary.

The vocabulary is fitted on training images (``fit``); an image is then the histogram of its
descriptors' nearest visual words, TF-IDF weighted and L2-normalised: the classic pipeline of the
source material, next to the deep encoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itm_core import hookimpl
from itm_core.components import Encoder
from itm_core.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import torch

DESCRIPTORS = ("orb", "sift")


class BagOfVisualWords(Encoder):
    modality = "image"
    requires_fit = True

    def __init__(
        self,
        descriptor: str = "orb",
        vocabulary: int = 256,
        max_keypoints: int = 200,
        image_size: int = 128,
        fit_images: int = 500,
        seed: int = 0,
    ) -> None:
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"bovw: descriptor must be one of {DESCRIPTORS}, got {descriptor!r}")
        if vocabulary < 2:
            raise ValueError(f"bovw: vocabulary must be at least 2, got {vocabulary}")
        self.descriptor, self.max_keypoints, self.image_size = descriptor, max_keypoints, image_size
        self.fit_images, self.seed = fit_images, seed
        self.dim = vocabulary
        self.state: dict[str, Any] | None = None

    def _extractor(self) -> Any:
        import cv2  # its stubs leave out the feature detectors

        if self.descriptor == "orb":
            return cv2.ORB_create(  # type: ignore[attr-defined]
                nfeatures=self.max_keypoints, edgeThreshold=8, patchSize=15, fastThreshold=5
            )
        return cv2.SIFT_create(nfeatures=self.max_keypoints)  # type: ignore[attr-defined]

    def descriptors(self, image: Any) -> np.ndarray:
        """Float descriptors of one image, ``(K, D)``; ORB's binary strings are unpacked to bits."""
        import numpy as np

        gray = np.asarray(image.convert("L").resize((self.image_size, self.image_size)))
        _, desc = self._extractor().detectAndCompute(gray, None)
        width = 256 if self.descriptor == "orb" else 128
        if desc is None:
            return np.zeros((0, width), dtype=np.float32)
        return (np.unpackbits(desc, axis=1) if self.descriptor == "orb" else desc).astype(np.float32)

    def fit(self, items: Sequence[Any]) -> None:
        import numpy as np
        from sklearn.cluster import MiniBatchKMeans

        picked = list(items)[:: max(1, len(items) // self.fit_images)][: self.fit_images]
        per_image = [self.descriptors(img) for img in picked]
        stacked = np.concatenate(per_image) if per_image else np.zeros((0, 1), dtype=np.float32)
        if len(stacked) < self.dim:
            raise DataError(
                f"bovw: the {len(picked)} fitting images gave {len(stacked)} descriptors, fewer than "
                f"vocabulary={self.dim}"
            )
        kmeans = MiniBatchKMeans(n_clusters=self.dim, random_state=self.seed, n_init=3, batch_size=2048).fit(stacked)
        counts = np.stack([self._histogram(kmeans, d) for d in per_image])
        idf = np.log((1 + len(counts)) / (1 + (counts > 0).sum(0))) + 1.0
        self.state = {"centers": kmeans.cluster_centers_.astype(np.float32), "idf": idf.astype(np.float32)}

    def _histogram(self, kmeans: Any, desc: np.ndarray) -> np.ndarray:
        import numpy as np

        if len(desc) == 0:
            return np.zeros(self.dim, dtype=np.float32)
        return np.bincount(kmeans.predict(desc), minlength=self.dim).astype(np.float32)

    def get_state(self) -> Any:
        return self.state

    def set_state(self, state: Any) -> None:
        self.state = state

    def encode(self, items: Sequence[Any]) -> torch.Tensor:
        import numpy as np
        import torch
        import torch.nn.functional as F

        if self.state is None:
            raise RuntimeError("bovw must be fitted on training images before encoding (call fit)")
        centers = torch.from_numpy(self.state["centers"])
        rows = []
        for img in items:
            desc = torch.from_numpy(self.descriptors(img))
            hist = torch.zeros(self.dim)
            if len(desc):
                hist = torch.bincount(torch.cdist(desc, centers).argmin(1), minlength=self.dim).float()
            rows.append(hist * torch.from_numpy(np.asarray(self.state["idf"])))
        out = torch.stack(rows) if rows else torch.zeros(0, self.dim)
        return F.normalize(out, dim=-1)


@hookimpl
def register_encoders(register):
    register(
        "bovw",
        BagOfVisualWords,
        modality="image",
        dim="vocabulary",
        trainable=False,
        requires_fit=True,
        requires=["opencv-python-headless|opencv-python", "scikit-learn"],
        check_options={"vocabulary": 16},
        description="Bag of visual words: ORB or SIFT descriptors, k-means vocabulary, TF-IDF histogram",
    )
