"""A corpus of bad input through `itm run evaluate` and `itm run retrain`, as a user would give it:
each is a reported skip or a one-line error naming the file, row or field; never a library traceback.
Property-based: Hypothesis writes manifests and parameter files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PAIR = {
    "image_encoder": {"name": "color-histogram", "options": {"bins": 2, "grid": 1}},
    "text_encoder": {"name": "bow", "options": {"max_features": 32}},
}


def _images(folder: Path) -> dict[str, str]:
    """Good images of every mode a user may have, and bad files; name -> what it is."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"ok{i}.png")
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(folder / "gray16.png")
    Image.new("CMYK", (24, 24), (0, 128, 0, 0)).save(folder / "cmyk.jpg")
    Image.new("P", (24, 24), 3).save(folder / "palette.png")
    Image.new("RGBA", (24, 24), (255, 0, 0, 128)).save(folder / "rgba.png")
    Image.new("RGB", (1, 1), "red").save(folder / "tiny.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((folder / "ok0.png").read_bytes()[:60])
    (folder / "text.png").write_text("not an image")
    Image.new("1", (8000, 6000)).save(folder / "bomb.png")  # 48 megapixels, a few KB
    outside = folder.parent / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    (folder / "link.png").symlink_to(outside)
    return {
        "gray16.png": "ok",
        "cmyk.jpg": "ok",
        "palette.png": "ok",
        "rgba.png": "ok",
        "tiny.png": "ok",
        "empty.png": "skip",
        "truncated.png": "skip",
        "text.png": "skip",
        "bomb.png": "skip",
        "missing.png": "skip",
        "link.png": "error",
        "../outside.png": "error",
        "/etc/hostname": "error",
    }


def _run(args: list[str]):
    from cli.main import app

    return CliRunner().invoke(app, args)


def _one_line_error(result, *names: str) -> None:
    """Exit status 2, a single `error:` line naming each of ``names``, and no traceback."""
    assert result.exit_code == 2, result.output[-3000:]
    assert "Traceback" not in result.output, result.output[-3000:]
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output[-3000:]
    for name in names:
        assert name in lines[0], (name, lines[0])


def _evaluate(tmp_path: Path, manifest: Path, **dataset: object):
    params = tmp_path / "eval.json"
    params.write_text(
        json.dumps(
            {
                "dataset": {"name": "manifest", "options": {"path": str(manifest)}, **dataset},
                "matchers": [{**PAIR, "untrained_heads": True}],
            }
        )
    )
    return _run(["run", "evaluate", "--params", str(params)])


@pytest.mark.parametrize(
    "bad",
    [
        "empty.png",
        "truncated.png",
        "text.png",
        "bomb.png",
        "missing.png",
        "link.png",
        "../outside.png",
        "/etc/hostname",
        "gray16.png",
        "cmyk.jpg",
        "palette.png",
        "rgba.png",
        "tiny.png",
    ],
)
def test_each_bad_or_odd_image(bad, prefect_server, mlflow_store, tmp_path):
    kinds = _images(tmp_path / "data")
    rows = [f"ok{i}.png,a red thing number {i},{['train', 'val', 'test'][i % 3]}" for i in range(12)] + [
        f"{bad},the odd one,test"
    ]
    manifest = tmp_path / "data" / "pairs.csv"
    manifest.write_text("image,caption,split\n" + "\n".join(rows) + "\n")
    result = _evaluate(tmp_path, manifest)
    if kinds[bad] == "ok":  # odd but usable: converted, scored
        assert result.exit_code == 0, result.output[-3000:]
    elif kinds[bad] == "skip":  # reported, the rest evaluated
        assert result.exit_code == 0, result.output[-3000:]
        import mlflow
        import pandas as pd

        (run,) = mlflow.search_runs(
            experiment_names=["itm-evaluate"],
            filter_string="tags.`mlflow.parentRunId` IS NULL",
            output_format="list",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        skipped = pd.read_csv(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="skipped_images.csv")
        )
        assert list(skipped["path"]) == [bad] and skipped["reason"][0]
        failing = _evaluate(tmp_path, manifest, on_bad_image="fail")
        _one_line_error(failing, bad)
    else:  # a path that leaves the root: refused when the manifest is read
        _one_line_error(result, bad.lstrip("./"))


@pytest.mark.parametrize(
    "case", ["bad utf-8", "wrong columns", "duplicate rows", "nan split", "empty caption", "empty manifest"]
)
def test_bad_manifests(case, prefect_server, mlflow_store, tmp_path):
    _images(tmp_path / "data")
    manifest = tmp_path / "data" / "pairs.csv"
    good = [f"ok{i}.png,a red thing number {i},{['train', 'val', 'test'][i % 3]}" for i in range(12)]
    if case == "bad utf-8":
        manifest.write_bytes(b"image,caption,split\n" + "\n".join(good).encode() + b"\nok1.png,caf\xe9 \xff,train\n")
        _one_line_error(_evaluate(tmp_path, manifest), "pairs.csv", "UTF-8")
    elif case == "wrong columns":
        manifest.write_text("picture,text\n" + "\n".join(r.rsplit(",", 1)[0] for r in good) + "\n")
        _one_line_error(_evaluate(tmp_path, manifest), "pairs.csv", "'image'", "picture")
    elif case == "duplicate rows":  # the same pair twice is one pair
        manifest.write_text("image,caption,split\n" + "\n".join(good + good[:3]) + "\n")
        result = _evaluate(tmp_path, manifest)
        assert result.exit_code == 0, result.output[-3000:]
    elif case == "nan split":
        manifest.write_text("image,caption,split\n" + "\n".join(good) + "\nok3.png,a thing,\n")
        _one_line_error(_evaluate(tmp_path, manifest), "pairs.csv", "split")
    elif case == "empty caption":
        manifest.write_text("image,caption,split\n" + "\n".join(good) + "\nok3.png,,train\n")
        _one_line_error(_evaluate(tmp_path, manifest), "pairs.csv", "caption")
    else:
        manifest.write_text("image,caption,split\n")
        _one_line_error(_evaluate(tmp_path, manifest), "pairs.csv")


@pytest.mark.parametrize(
    ("flow", "values", "names"),
    [
        (
            "retrain",
            {"dataset": {"name": "manifest", "options": {"pth": "pairs.csv"}}},
            ["dataset.options", "'manifest'", "no option 'pth'", "split_ratios", "did you mean 'path'?"],
        ),
        (
            "retrain",
            {"image_encoder": {"name": "efficientnet-lite0", "options": {"image_sise": 64}}},
            ["image_encoder.options", "no option 'image_sise'", "(it takes: image_size", "did you mean 'image_size'?"],
        ),
        (
            "evaluate",
            {"matchers": [{"image_encoder": {"name": "color-histogam"}, "text_encoder": {"name": "bow"}}]},
            ["matchers[0].image_encoder.name", "unknown encoder 'color-histogam'", "Did you mean 'color-histogram'?"],
        ),
        (
            "generate",
            {"generator": "retrieval-captioner", "generator_options": {"matchr": "models:/m/1"}},
            ["generator_options", "'retrieval-captioner'", "did you mean 'matcher'?"],
        ),
        ("retrain", {"trainig": {"epochs": 3}}, ["trainig: unknown setting; did you mean 'training'?"]),
        ("retrain", {"training": {"epocs": 3}}, ["training.epocs", "did you mean 'epochs'?", "(accepted here: "]),
        (
            "retrain",
            {"task": "text-to-image", "text_to_image": {"model": "gan", "channls": 8}},
            ["text_to_image.gan.channls", "did you mean 'channels'?"],
        ),
    ],
)
def test_a_typo_fails_in_one_line_before_any_run(flow, values, names, prefect_server, mlflow_store, tmp_path):
    """A misspelt key, component or option, at the top or inside a component's options: one line that
    names it, what is accepted there and the closest match; no flow run, no MLflow run."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        before = len(client.read_flow_runs())
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(values))
    _one_line_error(_run(["run", flow, "--params", str(path)]), "params.yaml", *names)
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs()) == before
    import mlflow

    assert mlflow.search_runs(search_all_experiments=True).empty


def test_a_flow_started_with_unknown_options_fails_before_its_mlflow_run(prefect_server, mlflow_store):
    """From the Prefect UI the parameters reach the flow unchecked by the CLI: the flow checks them first."""
    import mlflow

    from flows.retrain import retrain
    from itm_core.config import ComponentParams, RetrainParams
    from itm_core.errors import OptionsError

    params = RetrainParams(image_encoder=ComponentParams(name="color-histogram", options={"binz": 4}))
    with pytest.raises(OptionsError, match=r"image_encoder.options: encoder 'color-histogram' has no option 'binz'"):
        retrain(params)
    assert mlflow.search_runs(search_all_experiments=True).empty


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(
            ["training", "dataset", "encoding", "task", "image_encoder", "promote_metric", "epochs", "extra"]
        ),
        st.one_of(
            st.none(),
            st.integers(-5, 5),
            st.text(max_size=8),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(
                st.sampled_from(["epochs", "batch_size", "name", "lr", "options"]),
                st.one_of(st.integers(-3, 3), st.text(max_size=5), st.floats(allow_nan=True)),
                max_size=3,
            ),
        ),
        max_size=4,
    )
)
def test_parameter_files_validate_or_name_the_field(tmp_path, values):
    """Any JSON a user may write either validates or fails before anything runs, with one line naming the file."""
    from itm_core.config import RetrainParams
    from itm_core.contract.params import ParamsFileError, load_params

    path = tmp_path / "params.json"
    path.write_text(json.dumps(values))
    try:
        load_params(path, RetrainParams)
    except ParamsFileError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: invalid RetrainParams: ") and "\n" not in message


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ok0.png", "ok1.png", "ok2.png", "nope.png", "../x.png", ""]),
            st.text(max_size=20),
            st.sampled_from(["train", "val", "test", "", "dev"]),
        ),
        max_size=12,
    )
)
def test_generated_manifests_load_or_name_the_problem(tmp_path_factory, rows):
    """A CSV manifest of any rows loads, or fails with a DataError naming the manifest."""
    import csv

    from itm_core.data import DataError, load_manifest

    folder = tmp_path_factory.mktemp("m")
    for i in range(3):
        Image.new("RGB", (8, 8)).save(folder / f"ok{i}.png")
    path = folder / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "split"])
        writer.writerows(rows)
    try:
        data = load_manifest(path)
    except DataError as exc:
        assert "pairs.csv" in str(exc) and "\n" not in str(exc).strip(), str(exc)
    else:
        assert len(data) >= 1 and all(c.strip() for c in data.captions)


def test_retrain_reports_bad_images_from_its_encoding_pass(prefect_server, mlflow_store, tmp_path):
    """retrain checks images in the pass that encodes them: the same skip report and the same one-line error."""
    _images(tmp_path / "data")
    rows = [f"ok{i}.png,a red thing number {i},{['train', 'val', 'test'][i % 3]}" for i in range(12)]
    rows += ["truncated.png,a broken one,train", "bomb.png,a huge one,val", "cmyk.jpg,a cmyk one,test"]
    manifest = tmp_path / "data" / "pairs.csv"
    manifest.write_text("image,caption,split\n" + "\n".join(rows) + "\n")

    def retrain(**dataset):
        params = tmp_path / "retrain.json"
        params.write_text(
            json.dumps(
                {
                    "dataset": {"name": "manifest", "options": {"path": str(manifest)}, **dataset},
                    **PAIR,
                    "training": {"epochs": 1, "batch_size": 4},
                    "registered_model": "bad-input",
                }
            )
        )
        return _run(["run", "retrain", "--params", str(params)])

    result = retrain()
    assert result.exit_code == 0, result.output[-3000:]
    import mlflow
    import pandas as pd

    result_json, _ = json.JSONDecoder().raw_decode(result.output[result.output.index("{") :])
    run = mlflow.get_run(result_json["run_id"])
    skipped = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="skipped_images.csv")
    )
    assert sorted(skipped["path"]) == ["bomb.png", "truncated.png"]
    _one_line_error(retrain(on_bad_image="fail"), "truncated.png")

    def index(**dataset):  # the index flow checks images in its one encoding pass too
        params = tmp_path / "index.json"
        params.write_text(
            json.dumps(
                {
                    "dataset": {"name": "manifest", "options": {"path": str(manifest)}, **dataset},
                    "matcher": "models:/bad-input@champion",
                    "captions": True,
                    "registered_model": None,
                }
            )
        )
        return _run(["run", "index", "--params", str(params)])

    result = index()
    assert result.exit_code == 0, result.output[-3000:]
    result_json, _ = json.JSONDecoder().raw_decode(result.output[result.output.index("{") :])
    assert result_json["images"] == 13 and result_json["captions"] == 13
    skipped = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=result_json["run_id"], artifact_path="skipped_images.csv")
    )
    assert sorted(skipped["path"]) == ["bomb.png", "truncated.png"]
    _one_line_error(index(on_bad_image="fail"), "truncated.png")
