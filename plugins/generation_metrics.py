"""Metrics for generated outputs.

- ``clipscore`` (captioning): reference-free image-caption alignment, ``w * max(cos, 0)`` in a matcher's
  joint space (CLIPScore's definition, with the champion matcher in place of CLIP by default).
- ``alignment`` (text-to-image): the same score between generated images and their prompts.
- ``r_precision`` (text-to-image): how often the matcher ranks the prompt first among ``candidates``
  prompts (the prompt and randomly drawn distractors); chance is ``1 / candidates``.
- ``fd`` and ``kid`` (text-to-image): Fréchet distance and kernel inception distance between the
  features of generated and reference images under an image encoder plugin (FID and KID proper when
  that encoder is InceptionV3).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from itm_core import hookimpl
from itm_core.components import Metric
from itm_core.contract.evidence import UnitScores, mean_scores
from itm_core.errors import DataError
from plugins import check_setups

if TYPE_CHECKING:
    from itm_core.models.matcher import Matcher

T = TypeVar("T")
DEFAULT_MATCHER = "models:/itm-matcher@champion"


def _need(name: str, key: str, value: T | None) -> T:
    """``value``, or an error naming the metric and the input it lacks."""
    if value is None:
        raise DataError(f"{name}: needs the input {key!r}")
    return value


def _same_length(name: str, a: Sequence[Any], b: Sequence[Any], what: str) -> None:
    if len(a) != len(b):
        raise DataError(f"{name}: {len(a)} images for {len(b)} {what}")


class _MatcherMetric(Metric):
    """Loads ``matcher`` (a model URI or saved folder) lazily, on the first compute."""

    def __init__(self, matcher: str = DEFAULT_MATCHER) -> None:
        self.matcher_uri = matcher
        self._matcher: Matcher | None = None

    @property
    def matcher(self) -> Any:
        if self._matcher is None:
            from itm_core.ops.tracking import load_matcher

            self._matcher = load_matcher(self.matcher_uri)
        return self._matcher

    def cosines(self, images: Sequence[Any], texts: Sequence[str]) -> Any:
        img = self.matcher.embed_image_objects(list(images))
        txt = self.matcher.embed_texts(list(texts))
        return self.matcher.similarity.pairwise(img, txt)


class ClipScore(_MatcherMetric):
    """``clipscore``: mean of ``weight * max(cos(image, caption), 0)``; no references needed."""

    task = "captioning"

    def __init__(self, matcher: str = DEFAULT_MATCHER, weight: float = 2.5) -> None:
        super().__init__(matcher)
        self.weight = weight

    def units(self, predictions: Sequence[str], images: Sequence[Any] | None = None, **_: Any) -> UnitScores:
        images = _need("clipscore", "images", images)
        _same_length("clipscore", images, predictions, "captions")
        per_image = self.weight * self.cosines(images, predictions).clamp_min(0) if predictions else []
        return mean_scores({"clipscore": per_image})

    def compute(self, predictions: Sequence[str], images: Sequence[Any] | None = None, **_: Any) -> dict[str, float]:
        return {"clipscore": self.units(predictions, images).value("clipscore")}


class Alignment(_MatcherMetric):
    """``alignment``: mean of ``weight * max(cos(generated image, prompt), 0)``."""

    task = "text-to-image"

    def __init__(self, matcher: str = DEFAULT_MATCHER, weight: float = 2.5) -> None:
        super().__init__(matcher)
        self.weight = weight

    def units(self, images: Sequence[Any], prompts: Sequence[str], **_: Any) -> UnitScores:
        _same_length("alignment", images, prompts, "prompts")
        per_prompt = self.weight * self.cosines(images, prompts).clamp_min(0) if images else []
        return mean_scores({"alignment": per_prompt}, "test prompts")

    def compute(self, images: Sequence[Any], prompts: Sequence[str], **_: Any) -> dict[str, float]:
        return {"alignment": self.units(images, prompts).value("alignment")}


class RPrecision(_MatcherMetric):
    """``r_precision``: the fraction of images whose own prompt the matcher ranks first among the prompt and
    ``candidates - 1`` distractors drawn (with ``seed``) from ``distractors`` (default: the other prompts).
    Distractors never repeat the prompt's text or any text in ``equivalents[i]`` (other captions of the
    same reference image). ``r_precision_chance`` is the mean of ``1 / candidates`` actually used."""

    task = "text-to-image"

    def __init__(self, matcher: str = DEFAULT_MATCHER, candidates: int = 100, seed: int = 0) -> None:
        super().__init__(matcher)
        if candidates < 2:
            raise ValueError(f"r_precision: candidates must be at least 2, got {candidates}")
        self.candidates = candidates
        self.seed = seed

    def compute(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        distractors: Sequence[str] | None = None,
        equivalents: Sequence[Sequence[str]] | None = None,
        **_: Any,
    ) -> dict[str, float]:
        scores = self.units(images, prompts, distractors, equivalents)
        return {k: scores.value(k) for k in ("r_precision", "r_precision_chance")}

    def units(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        distractors: Sequence[str] | None = None,
        equivalents: Sequence[Sequence[str]] | None = None,
        **_: Any,
    ) -> UnitScores:
        """Per prompt: whether the matcher ranked it first (1 or 0), and ``1 / candidates``."""
        import torch

        _same_length("r_precision", images, prompts, "prompts")
        if not images:
            return mean_scores({"r_precision": [], "r_precision_chance": []}, "test prompts")
        pool = sorted(set(distractors if distractors is not None else prompts))
        rng = random.Random(self.seed)
        img = self.matcher.embed_image_objects(list(images))
        text_index = {t: n for n, t in enumerate(sorted(set(pool) | set(prompts)))}
        txt = self.matcher.embed_texts(list(text_index))
        hits, chance = [], []
        for i, prompt in enumerate(prompts):
            banned = {prompt, *(equivalents[i] if equivalents is not None else ())}
            others = [t for t in pool if t not in banned]
            if not others:
                raise DataError(
                    "r_precision: no distractor prompts differ from the prompt; give more prompts or distractors"
                )
            chosen = rng.sample(others, min(self.candidates - 1, len(others)))
            rows = torch.tensor([text_index[prompt]] + [text_index[t] for t in chosen])
            scores = self.matcher.similarity.score(img[i : i + 1], txt[rows])[0]
            hits.append(float((scores[1:] < scores[0]).all()))  # ties count against the model
            chance.append(1.0 / len(rows))
        return mean_scores({"r_precision": hits, "r_precision_chance": chance}, "test prompts")


class _FeatureDistance(Metric):
    """Features of generated and reference images under an image encoder plugin (pooled output)."""

    task = "text-to-image"

    def __init__(self, encoder: str = "efficientnet-lite0", encoder_options: dict[str, Any] | None = None) -> None:
        from itm_core.contract.registry import create

        self.encoder_name = encoder
        options = (
            {"pool": "avg"} if encoder_options is None and encoder == "efficientnet-lite0" else (encoder_options or {})
        )
        self.encoder = create("encoder", encoder, **options)
        if self.encoder.modality != "image":
            raise ValueError(
                f"{type(self).__name__.lower()}: encoder {encoder!r} encodes {self.encoder.modality}, not images"
            )

    def features(self, images: Sequence[Any]) -> Any:
        import torch

        with torch.inference_mode():
            return torch.cat(
                [self.encoder.encode(list(images[s : s + 64])).double() for s in range(0, len(images), 64)]
            )

    def pair(self, name: str, images: Sequence[Any] | None, reference_images: Sequence[Any] | None) -> tuple[Any, Any]:
        images, reference_images = _need(name, "images", images), _need(name, "reference_images", reference_images)
        if len(images) < 2 or len(reference_images) < 2:
            raise DataError(
                f"{name}: needs at least 2 generated and 2 reference images, got {len(images)} and "
                f"{len(reference_images)}"
            )
        return self.features(images), self.features(reference_images)


class FrechetDistance(_FeatureDistance):
    """``fd``: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)`` of the two feature distributions."""

    def compute(
        self, images: Sequence[Any] | None = None, reference_images: Sequence[Any] | None = None, **_: Any
    ) -> dict[str, float]:
        import numpy as np
        from scipy import linalg

        a, b = (x.numpy() for x in self.pair("fd", images, reference_images))
        mu1, mu2 = a.mean(0), b.mean(0)
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        with warnings.catch_warnings():  # few images give singular covariances; the fallback below handles them
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm(s1 @ s2)
            if not np.isfinite(covmean).all():  # regularise as the FID reference code does
                eps = np.eye(len(s1)) * 1e-6
                covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
        covmean = covmean.real
        return {"fd": float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))}


class KernelDistance(_FeatureDistance):
    """``kid``: the unbiased MMD² with the cubic polynomial kernel ``(x.y / d + 1)^3``, averaged over
    ``subsets`` random subsets of ``subset_size`` images (``kid_std``: its spread)."""

    def __init__(
        self,
        encoder: str = "efficientnet-lite0",
        encoder_options: dict[str, Any] | None = None,
        subsets: int = 50,
        subset_size: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(encoder, encoder_options)
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed

    def compute(
        self, images: Sequence[Any] | None = None, reference_images: Sequence[Any] | None = None, **_: Any
    ) -> dict[str, float]:
        import torch

        a, b = self.pair("kid", images, reference_images)
        m = min(self.subset_size, len(a), len(b))
        d = a.shape[1]
        g = torch.Generator().manual_seed(self.seed)
        values = []
        for _subset in range(self.subsets):
            x = a[torch.randperm(len(a), generator=g)[:m]]
            y = b[torch.randperm(len(b), generator=g)[:m]]
            kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
            off = m * (m - 1)
            values.append(
                float(
                    (kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off - 2 * kxy.mean()
                )
            )
        t = torch.tensor(values)
        return {"kid": float(t.mean()), "kid_std": float(t.std()) if len(t) > 1 else 0.0}


@hookimpl
def register_metrics(register):
    register(
        "clipscore",
        ClipScore,
        task="captioning",
        description="Reference-free caption alignment w*max(cos,0) in a matcher's joint space (CLIPScore style)",
        check_options=check_setups.with_matcher(),
    )
    register(
        "alignment",
        Alignment,
        task="text-to-image",
        description="Generated image vs. prompt alignment w*max(cos,0) in a matcher's joint space",
        check_options=check_setups.with_matcher(),
    )
    register(
        "r_precision",
        RPrecision,
        task="text-to-image",
        description="How often a matcher ranks the prompt first among distractor prompts",
        check_options=check_setups.with_matcher(),
    )
    register(
        "fd",
        FrechetDistance,
        task="text-to-image",
        description="Fréchet distance of generated vs. reference image features (FID with InceptionV3)",
        requires=["scipy"],
    )
    register(
        "kid",
        KernelDistance,
        task="text-to-image",
        description="Kernel (inception) distance of generated vs. reference image features",
    )
