"""The training recipe at Flickr30k size: variants of ``training`` on the same cached features.

    python -m benchmarks.recipe '[{"passes": 1, "epochs": 40}, {"passes": 1, "epochs": 40, "precision": "fp32"}]'
    python -m benchmarks.recipe '[{"components": 1024}]'   # image features on 1,024 principal components

Builds ``shapes`` with 29,000 / 1,000 / 1,000 images (five captions each), encodes it once with the
default towers into ``$ITM_CACHE_DIR`` (a second call reads the cache), then trains one matcher per
variant (a JSON list of ``training`` settings; ``components: k`` also projects the image features on
their top ``k`` principal components, whitened, taken from the training images) and prints, per
variant, the training seconds, the epochs run, the best epoch, the validation rsum after each epoch
and the test rsum. Training
only: the wall time of a whole retrain is ``python -m benchmarks.run --only flickr``.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from itm_core import create
from itm_core.config import EncodingParams, RetrainParams
from itm_core.encode.embed import EmbeddingCache, encode_split
from itm_core.encode.features import FeatureSplit
from itm_core.judge.evaluation import build_encoders
from itm_core.models.training import ContrastiveTraining, evaluate_features, train_contrastive


def main(variants: list[dict], n_train: int = 29000, n_eval: int = 1000) -> None:
    data = create("dataset", "shapes", n_train=n_train, n_val=n_eval, n_test=n_eval).load()
    splits = {s: data.split(s) for s in ("train", "val", "test")}
    params = RetrainParams()
    image, text = build_encoders(params.image_encoder, params.text_encoder, splits["train"])
    cache = EmbeddingCache()
    features = {}
    for name, split in splits.items():
        started = time.perf_counter()
        _, features[name], _ = encode_split(image, text, split, cache, EncodingParams())
        print(f"{name} encoded in {time.perf_counter() - started:.1f} s", flush=True)
    for variant in variants:
        settings = dict(variant)
        split = whitened(features, settings.pop("components")) if "components" in settings else features
        options = ContrastiveTraining(**settings)
        torch.manual_seed(options.seed)
        matcher = options.build_matcher(
            params.image_encoder.model_dump(),
            params.text_encoder.model_dump(),
            int(split["train"].image.shape[1]),
            int(text.dim),
            len(split["train"].image),
        )
        started, curve = time.perf_counter(), []

        def on_epoch(epoch: int, metrics: dict[str, float], curve: list = curve, started: float = started) -> None:
            curve.append((epoch, round(time.perf_counter() - started, 1), round(metrics["val_rsum"], 1)))
            print(curve[-1], flush=True)

        result = train_contrastive(matcher, split["train"], split["val"], options, on_epoch=on_epoch)
        seconds = time.perf_counter() - started
        test = evaluate_features(matcher, split["test"])
        summary = {"variant": variant, "train_s": round(seconds, 1), "epochs": len(result.history)}
        summary |= {"best": result.best_epoch, "test_rsum": round(test["rsum"], 1), "curve": curve}
        print(json.dumps(summary), flush=True)


def whitened(features: dict[str, FeatureSplit], k: int) -> dict[str, FeatureSplit]:
    """Every split's image features standardised and projected on the top ``k`` principal components of
    the training images, each scaled to unit variance."""
    x = features["train"].image.float()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    values, vectors = torch.linalg.eigh(z.T @ z / len(z))
    basis = vectors[:, -k:] / values[-k:].clamp(min=1e-6).sqrt()
    print(f"{k} components keep {float(values[-k:].sum() / values.sum()):.1%} of the variance", flush=True)
    return {
        name: FeatureSplit(((f.image.float() - mean) / std) @ basis, f.text, f.caption_image)
        for name, f in features.items()
    }


if __name__ == "__main__":
    main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else [{}])
