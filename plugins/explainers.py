"""Built-in explainers: why a matcher scores an image-text pair as it does.

- ``occlusion``: the score drop when each cell of a ``grid x grid`` raster is hidden (image).
- ``word-deletion``: the score drop without each word (text).
- ``lime``: LIME (the ``lime`` package): a sparse linear model of the score over superpixels
  (SLIC) and words, fitted on ``num_samples`` random maskings (image and text).
- ``shap``: Kernel SHAP (the ``shap`` package) over the same superpixels and words: Shapley values
  of the score, estimated from ``nsamples`` coalitions (image and text).
- ``integrated-gradients``: Captum's integrated gradients from a plain image of the picture's
  median colour to the picture, summed over colour channels (image; needs an image encoder with
  ``encode_differentiable``, as ``efficientnet-lite0`` has).
- ``grad-cam``: Captum's Grad-CAM on the image encoder's last feature map (``cam_layer``) (image;
  same requirement).

Hidden regions are painted with the image's median colour; hidden words are left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from itm_core import hookimpl
from itm_core.components import Explainer
from itm_core.contract.explaining import Attribution, PairScorer
from itm_core.errors import ParamsError
from itm_core.judge.explain import fill_colour, hide, occlusion_heat, word_deletion, words_of


def superpixels(image: Any, segments: int) -> np.ndarray:
    """SLIC superpixels of ``image``: ``(h, w)`` integer labels from 0."""
    from skimage.segmentation import slic

    labels = slic(np.asarray(image), n_segments=segments, compactness=10, start_label=0)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No progress bar from lime's image explainer (it draws one per explanation, with no option to stop it)."""
    from unittest import mock

    from lime import lime_image

    with mock.patch.object(lime_image, "tqdm", lambda iterable, *args, **kwargs: iterable):
        yield


def _check_positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{name}: {key} must be at least 1, got {value}")


class Occlusion(Explainer):
    modalities = ("image",)

    def __init__(self, grid: int = 8) -> None:
        _check_positive("occlusion", grid=grid)
        self.grid = grid

    def explain(self, scorer: PairScorer, image: Any, text: str) -> Attribution:
        score, heat = occlusion_heat(scorer, image, text, self.grid)
        return Attribution("occlusion", score, heat=heat, words=text.split())


class WordDeletion(Explainer):
    modalities = ("text",)

    def explain(self, scorer: PairScorer, image: Any, text: str) -> Attribution:
        score, contributions = word_deletion(scorer, image, text)
        return Attribution("word-deletion", score, words=words_of(text), word_scores=contributions)


class Lime(Explainer):
    modalities = ("image", "text")

    def __init__(self, num_samples: int = 300, segments: int = 40, seed: int = 0) -> None:
        _check_positive("lime", num_samples=num_samples, segments=segments)
        self.num_samples, self.segments, self.seed = num_samples, segments, seed

    def explain(self, scorer: PairScorer, image: Any, text: str) -> Attribution:
        from lime import lime_image
        from lime.lime_text import LimeTextExplainer
        from PIL import Image

        image, words = image.convert("RGB"), words_of(text)
        labels = superpixels(image, self.segments)
        explainer = lime_image.LimeImageExplainer(random_state=self.seed)
        with quiet_progress():  # lime draws a progress bar for every explanation
            found = explainer.explain_instance(
                np.asarray(image),
                lambda batch: scorer.score_images([Image.fromarray(b.astype(np.uint8)) for b in batch], text)[:, None],
                labels=(0,),
                top_labels=None,
                hide_color=fill_colour(image),
                num_features=int(labels.max()) + 1,
                num_samples=self.num_samples,
                batch_size=64,
                segmentation_fn=lambda _: labels,
                random_seed=self.seed,
            )
        weight = dict(found.local_exp[0])
        heat = np.vectorize(lambda s: weight.get(s, 0.0), otypes=[np.float32])(labels)
        text_found = LimeTextExplainer(
            bow=False, split_expression=r"\s+", mask_string="", random_state=self.seed
        ).explain_instance(
            " ".join(words),
            lambda texts: scorer.score_texts(image, [" ".join(t.split()) for t in texts])[:, None],
            labels=(0,),
            num_features=len(words),
            num_samples=self.num_samples,
        )
        per_word = dict(text_found.local_exp[0])
        return Attribution(
            "lime",
            scorer.score(image, text),
            heat=heat,
            words=words,
            word_scores=[float(per_word.get(i, 0.0)) for i in range(len(words))],
        )


class KernelShap(Explainer):
    modalities = ("image", "text")

    def __init__(self, nsamples: int = 300, segments: int = 40, seed: int = 0) -> None:
        _check_positive("shap", nsamples=nsamples, segments=segments)
        self.nsamples, self.segments, self.seed = nsamples, segments, seed

    def _shapley(self, f: Any, n: int) -> np.ndarray:
        import warnings

        with warnings.catch_warnings():  # shap's colour maps warn about matplotlib deprecations on import
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            import shap

        np.random.seed(self.seed)  # Kernel SHAP draws its coalitions from numpy's global generator
        explainer = shap.KernelExplainer(f, np.zeros((1, n)))
        values = explainer.shap_values(np.ones((1, n)), nsamples=self.nsamples, silent=True)
        return np.asarray(values, dtype=np.float64).reshape(-1)[:n]

    def explain(self, scorer: PairScorer, image: Any, text: str) -> Attribution:
        image, words = image.convert("RGB"), words_of(text)
        labels = superpixels(image, self.segments)
        fill = fill_colour(image)
        n_seg = int(labels.max()) + 1

        def images(z: np.ndarray) -> np.ndarray:
            return scorer.score_images([hide(image, ~row.astype(bool)[labels], fill) for row in z], text)

        def texts(z: np.ndarray) -> np.ndarray:
            return scorer.score_texts(image, [" ".join(w for w, keep in zip(words, row) if keep) for row in z])

        per_segment = self._shapley(images, n_seg)
        heat = per_segment[labels].astype(np.float32)
        per_word = (
            self._shapley(texts, len(words))
            if len(words) > 1
            else np.array([scorer.score(image, text) - float(texts(np.zeros((1, 1)))[0])])
        )
        return Attribution(
            "shap", scorer.score(image, text), heat=heat, words=words, word_scores=[float(v) for v in per_word]
        )


class IntegratedGradients(Explainer):
    modalities = ("image",)

    def __init__(self, steps: int = 32) -> None:
        _check_positive("integrated-gradients", steps=steps)
        self.steps = steps

    def explain(self, scorer: PairScorer, image: Any, text: str) -> Attribution:
        from captum.attr import IntegratedGradients as IG
        from PIL import Image

        scorer.require_differentiable("integrated-gradients")
        x = scorer.pixels(image)
        baseline = scorer.pixels(Image.new("RGB", image.size, fill_colour(image)))
        attr = IG(scorer.forward(text)).attribute(x, baselines=baseline, n_steps=self.steps, internal_batch_size=16)
        return Attribution(
            "integrated-gradients",
            scorer.score(image, text),
            heat=attr[0].sum(0).detach().numpy().astype(np.float32),
            words=text.split(),
        )


class GradCam(Explainer):
    modalities = ("image",)

    def explain(self, scorer: PairScorer, image: Any, text: str) -> Attribution:
        from captum.attr import LayerGradCam

        enc = scorer.require_differentiable("grad-cam")
        if getattr(enc, "cam_layer", None) is None:
            raise ParamsError(
                f"explainer 'grad-cam' needs the image encoder's cam_layer; {type(enc).__name__} has none"
            )
        cam = LayerGradCam(scorer.forward(text), enc.cam_layer).attribute(scorer.pixels(image), relu_attributions=True)
        return Attribution(
            "grad-cam",
            scorer.score(image, text),
            heat=cam[0, 0].detach().numpy().astype(np.float32),
            words=text.split(),
        )


@hookimpl
def register_explainers(register):
    register(
        "occlusion",
        Occlusion,
        modalities=["image"],
        options=["grid"],
        check_options={"grid": 2},
        description="Score drop when each grid cell is hidden",
    )
    register("word-deletion", WordDeletion, modalities=["text"], description="Score drop without each word")
    register(
        "lime",
        Lime,
        modalities=["image", "text"],
        options=["num_samples", "segments", "seed"],
        requires=["lime", "scikit-image"],
        check_options={"num_samples": 20, "segments": 8},
        description="LIME over SLIC superpixels and words",
    )
    register(
        "shap",
        KernelShap,
        modalities=["image", "text"],
        options=["nsamples", "segments", "seed"],
        requires=["shap", "scikit-image"],
        check_options={"nsamples": 20, "segments": 8},
        description="Kernel SHAP over SLIC superpixels and words",
    )
    register(
        "integrated-gradients",
        IntegratedGradients,
        modalities=["image"],
        options=["steps"],
        requires=["captum"],
        needs="encode_differentiable",
        check_options={"steps": 4},
        description="Captum integrated gradients from a plain median-colour image (image encoders with gradients)",
    )
    register(
        "grad-cam",
        GradCam,
        modalities=["image"],
        requires=["captum"],
        needs="encode_differentiable",
        description="Captum Grad-CAM on the image encoder's last feature map (image encoders with gradients)",
    )
