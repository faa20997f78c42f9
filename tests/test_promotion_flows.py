"""Promotion by evidence through real retrain flow runs: retrains that differ only by seed leave the
champion where it is, and a dozen photos of one's own never replace a champion trained on other data."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from itm_core.config import ComponentParams, ContrastiveTraining, DatasetParams, RetrainParams
from itm_core.ops.promotion import PromotionOptions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CLASSIC = dict(
    image_encoder=ComponentParams(name="color-histogram"),
    text_encoder=ComponentParams(name="tfidf", options={"max_features": 256}),
)


def twelve_photos(folder) -> DatasetParams:
    """Twelve photos with three captions each, in a CSV without a split column (so 0.8 / 0.1 / 0.1)."""
    folder.mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (48, 48), ((i * 40) % 256, (i * 90) % 256, (i * 150) % 256)).save(folder / f"p{i}.png")
        rows += [(f"p{i}.png", f"{word} photo number {i}") for word in ("a", "my", "the")]
    pd.DataFrame(rows, columns=["image", "caption"]).to_csv(folder / "photos.csv", index=False)
    return DatasetParams(name="manifest", options={"path": str(folder / "photos.csv")})


def test_seeds_do_not_flip_the_champion_and_a_dozen_photos_do_not_replace_it(
    prefect_server, mlflow_store, tiny_shapes_options, tmp_path
):
    from flows.retrain import retrain

    client = MlflowClient()
    shapes = DatasetParams(options={**tiny_shapes_options, "n_train": 96, "n_test": 64})
    training = ContrastiveTraining(epochs=4, batch_size=32)

    def champion() -> str:
        return str(client.get_model_version_by_alias("itm-matcher", "champion").version)

    first = retrain(RetrainParams(dataset=shapes, training=training, **CLASSIC))
    assert first["promoted"] and champion() == "1"

    # the same recipe with other seeds: the paired interval straddles zero, so v1 stays
    for seed in (1, 2):
        other = retrain(RetrainParams(dataset=shapes, training=training.model_copy(update={"seed": seed}), **CLASSIC))
        assert not other["promoted"] and champion() == "1", other["decision"]
        assert "on 64 test images: not enough evidence at 95% confidence" in other["decision"]
        interval = client.get_model_version("itm-matcher", other["model_version"]).tags["promotion.interval"]
        low, high = (float(x) for x in interval.split("[")[1].rstrip("]").split(","))
        assert low <= 0 <= high and f"rsum {interval}" in other["decision"]
    # under the old rule the higher of two noisy runs would have won
    better = retrain(
        RetrainParams(
            dataset=shapes,
            training=training.model_copy(update={"seed": 3}),
            promotion=PromotionOptions(policy="better"),
            **CLASSIC,
        )
    )
    assert "(policy better: " in better["decision"]
    assert champion() == (better["model_version"] if better["promoted"] else "1")
    kept = champion()

    # a dozen photos: 10 / 1 / 1 images, warned about, and not promoted across datasets
    photos = retrain(RetrainParams(dataset=twelve_photos(tmp_path / "photos"), training=training, **CLASSIC))
    assert not photos["promoted"] and champion() == kept
    assert "trained on other data than the champion" in photos["decision"]
    assert "give this data its own registered_model" in photos["decision"].lower()
    assert any("split 'test' has 1 images" in w for w in photos["warnings"])
    assert any("split 'val' has 1 images" in w for w in photos["warnings"])
    run = client.get_run(photos["run_id"])
    assert "early stopping and the best epoch rest on them" in run.data.tags["data.warnings"]

    # allowed to compare across datasets, one test image is still too few to replace a champion
    allowed = retrain(
        RetrainParams(
            dataset=twelve_photos(tmp_path / "again"),
            training=training,
            promotion=PromotionOptions(across_datasets=True),
            **CLASSIC,
        )
    )
    assert not allowed["promoted"] and champion() == kept
    assert "on 1 test images: too few to replace a champion" in allowed["decision"]

    # their own registered model: the first version is its champion
    own = retrain(
        RetrainParams(
            dataset=twelve_photos(tmp_path / "own"), training=training, registered_model="my-photos", **CLASSIC
        )
    )
    assert own["promoted"] and own["decision"].startswith("promoted v1: first model")
