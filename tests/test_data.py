"""Manifests, safe image loading and the shapes dataset."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image

from itm_core import create
from itm_core.data import DataError, check_images, load_manifest, open_image
from itm_core.data.manifest import assign_splits


@pytest.fixture
def image_folder(tmp_path):
    for name, colour in (("a.png", "red"), ("b.png", "green"), ("c.png", "blue")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    return tmp_path


def test_csv_one_row_per_pair_groups_captions(image_folder):
    pd.DataFrame(
        {
            "image": ["a.png", "a.png", "b.png", "c.png"],
            "caption": ["red", "a red square", "green", "blue"],
            "split": ["train", "train", "val", "test"],
        }
    ).to_csv(image_folder / "pairs.csv", index=False)
    ds = load_manifest(image_folder / "pairs.csv")
    assert ds.images == ["a.png", "b.png", "c.png"]
    assert ds.captions_of(0) == ["red", "a red square"]
    assert ds.caption_image == [0, 0, 1, 2]
    assert ds.image_split == ["train", "val", "test"]
    assert ds.split("val").captions == ["green"]


def test_jsonl_and_parquet_with_caption_lists_and_custom_columns(image_folder):
    rows = [
        {"file": "a.png", "texts": ["red", "crimson"]},
        {"file": "b.png", "texts": ["green"]},
        {"file": "c.png", "texts": ["blue"]},
    ]
    (image_folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_parquet(image_folder / "m.parquet")
    for name in ("m.jsonl", "m.parquet"):
        ds = load_manifest(
            image_folder / name, image_column="file", caption_column="texts", split_column=None, split_ratios=(1, 1, 1)
        )
        assert ds.captions == ["red", "crimson", "green", "blue"] and ds.caption_image == [0, 0, 1, 2]
        assert sorted(ds.image_split) == ["test", "train", "val"]


def test_karpathy_json(image_folder):
    (image_folder / "val2014").mkdir()
    doc = {
        "images": [
            {
                "filepath": "val2014",
                "filename": "x.jpg",
                "split": "restval",
                "sentences": [{"raw": "A cat."}, {"raw": "A kitten."}],
            },
            {"filename": "a.png", "split": "test", "sentences": [{"raw": "Red."}]},
        ]
    }
    (image_folder / "dataset_coco.json").write_text(json.dumps(doc))
    ds = load_manifest(image_folder / "dataset_coco.json")
    assert ds.images == ["val2014/x.jpg", "a.png"]
    assert ds.image_split == ["train", "test"]  # restval joins train, as in the Karpathy convention
    assert ds.captions_of(0) == ["A cat.", "A kitten."]


def test_missing_column_names_file_and_columns(image_folder):
    pd.DataFrame({"path": ["a.png"], "caption": ["x"]}).to_csv(image_folder / "bad.csv", index=False)
    with pytest.raises(DataError) as e:
        load_manifest(image_folder / "bad.csv")
    assert "bad.csv" in str(e.value) and "'image'" in str(e.value) and "path, caption" in str(e.value)


def test_empty_caption_and_unknown_format(image_folder):
    pd.DataFrame({"image": ["a.png"], "caption": [""]}).to_csv(image_folder / "empty.csv", index=False)
    with pytest.raises(DataError, match=r"empty.csv, row 2: column 'caption'"):
        load_manifest(image_folder / "empty.csv")
    (image_folder / "m.txt").write_text("x")
    with pytest.raises(DataError, match="cannot tell the manifest format"):
        load_manifest(image_folder / "m.txt")
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(image_folder / "nope.csv")


def test_path_escaping_the_root_is_rejected(image_folder):
    for bad in ("../outside.png", "/etc/passwd"):
        pd.DataFrame({"image": ["a.png", bad], "caption": ["x", "y"]}).to_csv(image_folder / "esc.csv", index=False)
        with pytest.raises(DataError, match="escapes the dataset root"):
            load_manifest(image_folder / "esc.csv")


@pytest.fixture
def bad_images(image_folder):
    (image_folder / "corrupt.png").write_bytes(b"not an image at all")
    big = Image.new("RGB", (256, 256), "white")
    big.save(image_folder / "big.png")
    full = (image_folder / "big.png").read_bytes()
    (image_folder / "truncated.png").write_bytes(full[: len(full) // 2])
    rows = [
        ("a.png", "ok"),
        ("missing.png", "gone"),
        ("corrupt.png", "junk"),
        ("truncated.png", "half"),
        ("big.png", "large"),
    ]
    pd.DataFrame(rows, columns=["image", "caption"]).to_csv(image_folder / "mixed.csv", index=False)
    return load_manifest(image_folder / "mixed.csv", split_ratios=(1, 0, 0))


def test_bad_images_skipped_with_report(bad_images):
    kept, skipped = check_images(bad_images, on_error="skip", max_pixels=100 * 100)
    assert kept.images == ["a.png"] and kept.captions == ["ok"]
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {"missing.png", "corrupt.png", "truncated.png", "big.png"}
    assert "not found" in reasons["missing.png"]
    assert "not a usable image" in reasons["corrupt.png"]
    assert "truncated" in reasons["truncated.png"]
    assert "decompression bomb" in reasons["big.png"]


def test_bad_images_fail_names_the_file(bad_images):
    with pytest.raises(DataError, match="missing.png: image file not found.*on_bad_image to 'skip'"):
        check_images(bad_images, on_error="fail")


def test_open_image_converts_grayscale_and_rgba(tmp_path):
    Image.new("L", (4, 4), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 4)).save(tmp_path / "t.png")
    assert open_image(tmp_path / "g.png").mode == "RGB" and open_image(tmp_path / "t.png").mode == "RGB"


@pytest.mark.parametrize("fmt", ["karpathy", "csv", "jsonl"])
def test_split_ratios_split_any_manifest_afresh_and_the_missing_split_error_names_them(tmp_path, fmt):
    """A file whose images are all in 'test' (as a Karpathy file of one's own photos often is): flows that
    need train and val are told which option re-splits it, and split_ratios with a seed does, in every format."""
    names = [f"p{i}.png" for i in range(20)]
    for name in names:
        Image.new("RGB", (8, 8), "red").save(tmp_path / name)
    if fmt == "karpathy":
        doc = {"images": [{"filename": n, "split": "test", "sentences": [{"raw": f"photo {n}"}]} for n in names]}
        path = tmp_path / "mine.json"
        path.write_text(json.dumps(doc))
    else:
        frame = pd.DataFrame({"image": names, "caption": [f"photo {n}" for n in names], "split": ["test"] * 20})
        path = tmp_path / f"mine.{fmt}"
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_json(path, orient="records", lines=True)
    as_given = load_manifest(path)
    assert as_given.splits == ["test"]
    with pytest.raises(DataError, match=r"no images in split 'train'; its splits are: test\. .*split_ratios"):
        as_given.split("train")
    resplit = load_manifest(path, split_ratios=(0.6, 0.2, 0.2), seed=3)
    assert [len(resplit.split(s)) for s in ("train", "val", "test")] == [12, 4, 4]
    assert resplit.image_split == load_manifest(path, split_ratios=[0.6, 0.2, 0.2], seed=3).image_split
    assert resplit.image_split != load_manifest(path, split_ratios=(0.6, 0.2, 0.2), seed=4).image_split
    assert resplit.fingerprint() == as_given.fingerprint() != "" and resplit.splits_fingerprint() != (
        as_given.splits_fingerprint()
    )


def test_assign_splits_is_deterministic_and_proportional():
    a = assign_splits(100, (0.8, 0.1, 0.1), seed=1)
    assert a == assign_splits(100, (0.8, 0.1, 0.1), seed=1) and a != assign_splits(100, (0.8, 0.1, 0.1), seed=2)
    assert (a.count("train"), a.count("val"), a.count("test")) == (80, 10, 10)
    with pytest.raises(DataError, match="split_ratios"):
        assign_splits(10, (1, -1, 0), seed=0)


def test_unknown_split_lists_the_splits(tiny_shapes):
    with pytest.raises(DataError, match="no images in split 'dev'; its splits are: test, train, val"):
        tiny_shapes.split("dev")


def test_shapes_is_deterministic_with_hard_negatives(tiny_shapes, tiny_shapes_options, tmp_path):
    assert [len(tiny_shapes.split(s)) for s in ("train", "val", "test")] == [48, 16, 16]
    assert len(tiny_shapes.captions) == 5 * len(tiny_shapes)
    again = create("dataset", "shapes", root=str(tmp_path), **tiny_shapes_options).load()
    assert again.captions == tiny_shapes.captions
    assert (again.root / again.images[5]).read_bytes() == (tiny_shapes.root / tiny_shapes.images[5]).read_bytes()
    other_seed = create("dataset", "shapes", root=str(tmp_path), **{**tiny_shapes_options, "seed": 4}).load()
    assert other_seed.captions != tiny_shapes.captions
    for i in range(len(tiny_shapes)):
        truths = set(tiny_shapes.captions_of(i))
        negatives = [tiny_shapes.image_extras[k][i] for k in ("neg_color", "neg_shape", "neg_position")]
        assert all(n and n not in truths for n in negatives)


def test_shapes_hard_negatives_swap_one_thing():
    import random

    from plugins.shapes import Obj, Scene, canonical, hard_negatives

    scene = Scene((Obj("circle", "red", "small"), Obj("square", "blue", "large")))
    negs = hard_negatives(scene, random.Random(0))
    assert canonical(scene) == "a small red circle to the left of a large blue square"
    assert negs["neg_color"] == "a small blue circle to the left of a large red square"
    assert negs["neg_shape"] == "a small red square to the left of a large blue circle"
    assert negs["neg_position"] == "a large blue square to the left of a small red circle"


def test_shapes_rejects_bad_options():
    with pytest.raises(ValueError, match="n_test must be at least 1"):
        create("dataset", "shapes", n_test=0)


def test_shapes_questions_and_probe_caption(tiny_shapes):
    from plugins.shapes import COLORS, QUESTION_TYPES, SHAPES, SIZES

    answers = set(COLORS) | set(SHAPES) | set(SIZES) | {"one", "two", "left", "right", "top", "bottom", "center"}
    for i in range(len(tiny_shapes)):
        qa = tiny_shapes.image_extras["qa"][i]
        assert {q["type"] for q in qa} <= set(QUESTION_TYPES) and len(qa) >= 4
        assert all(q["answer"] in answers and q["question"].endswith("?") for q in qa)
        objects = tiny_shapes.image_extras["objects"][i]
        count = next(q["answer"] for q in qa if q["type"] == "count")
        assert count == ("one" if len(objects) == 1 else "two")
        truth = tiny_shapes.image_extras["probe_true"][i]
        assert all(o["color"] in truth and o["shape"] in truth for o in objects)


def test_shapes_question_answers_match_the_scene():
    import random

    from plugins.shapes import Obj, Scene, questions

    qa = {
        q["type"]: q
        for q in questions(Scene((Obj("circle", "red", "small"), Obj("square", "blue", "large"))), random.Random(1))
    }
    where = "left" if "left" in qa["colour"]["question"] else "right"
    assert qa["colour"]["answer"] == ("red" if where == "left" else "blue")
    assert qa["size"]["answer"] == ("small" if where == "left" else "large")
    single = {
        q["type"]: q["answer"] for q in questions(Scene((Obj("star", "green", "medium"),), "top"), random.Random(0))
    }
    assert single == {"count": "one", "colour": "green", "shape": "star", "size": "medium", "position": "top"}


def test_captions_by_image_matches_captions_of(tiny_shapes):
    for data in (tiny_shapes, tiny_shapes.split("test").head(5)):
        assert data.captions_by_image() == [data.captions_of(i) for i in range(len(data))]


def test_pack_then_read_gives_the_same_pairs(tiny_shapes, tmp_path):
    """`itm data pack` writes shards that the `webdataset` dataset reads back as the same pairs."""
    from typer.testing import CliRunner

    from cli.main import app
    from itm_core import create

    data = tiny_shapes
    rows = [
        {"image": rel, "caption": caps, "split": split}
        for rel, caps, split in zip(data.images, data.captions_by_image(), data.image_split)
    ]
    pd.DataFrame(rows).to_json(data.root / "packed.jsonl", orient="records", lines=True)
    result = CliRunner().invoke(
        app, ["data", "pack", str(data.root / "packed.jsonl"), str(tmp_path / "shards"), "--shard-size", "30"]
    )
    assert result.exit_code == 0, result.output
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    assert len(shards) == -(-len(data) // 30)
    back = create(
        "dataset",
        "webdataset",
        urls=str(tmp_path / "shards" / f"shard-{{00000..{len(shards) - 1:05d}}}.tar"),
        root=str(tmp_path / "data"),
    ).load()
    assert back.captions_by_image() == data.captions_by_image() and back.image_split == data.image_split
    assert [p.read_bytes() for p in back.image_paths()] == [p.read_bytes() for p in data.image_paths()]


def test_webdataset_members_that_are_not_pairs_are_left_out_and_bad_images_reported(tmp_path):
    import webdataset as wds

    from itm_core.data.webdataset import load_webdataset
    from itm_core.encode.embed import EncodeOptions, encode_split

    good = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(good, format="PNG")
    with wds.TarWriter(str(tmp_path / "s-0.tar")) as sink:
        sink.write({"__key__": "a", "png": good.getvalue(), "txt": "a red square"})
        sink.write({"__key__": "b", "jpg": b"not a jpeg", "txt": "junk"})
        sink.write({"__key__": "c", "txt": "a caption without an image"})
        sink.write({"__key__": "d", "png": good.getvalue()})
    data, left_out = load_webdataset(str(tmp_path / "s-{0..0}.tar"), split_ratios=(1, 0, 0), root=tmp_path / "out")
    assert dict(left_out) == {
        "s-0.tar/c": "no image member (.jpg, .jpeg, .png, .webp)",
        "s-0.tar/d": "no caption (.txt, or a 'captions' list in .json)",
    }
    assert data.images == ["s-0/a.png", "s-0/b.jpg"]
    image, text = create("encoder", "color-histogram", bins=2, grid=1), create("encoder", "bow")
    text.fit(data.captions)
    kept, _, skipped = encode_split(image, text, data, None, EncodeOptions(workers=0), on_bad_image="skip")
    assert (
        kept.images == ["s-0/a.png"]
        and [s.path for s in skipped] == ["s-0/b.jpg"]
        and "not a usable image" in skipped[0].reason
    )
    with pytest.raises(DataError, match="s-0/b.jpg: not a usable image"):
        encode_split(image, text, data, None, EncodeOptions(workers=0), on_bad_image="fail")
    with pytest.raises(DataError, match="does not exist"):
        load_webdataset(str(tmp_path / "nope-{0..1}.tar"))


def test_shapes_defaults_from_the_environment(monkeypatch):
    """ITM_SHAPES_DEFAULTS replaces the built-in sizes; explicit options still win; a bad value names the variable."""
    from itm_core import create

    monkeypatch.setenv("ITM_SHAPES_DEFAULTS", '{"n_train": 7, "image_size": 48}')
    assert create("dataset", "shapes").params["n_train"] == 7
    assert create("dataset", "shapes", n_train=9).params == {**create("dataset", "shapes").params, "n_train": 9}
    monkeypatch.setenv("ITM_SHAPES_DEFAULTS", '{"n_trian": 7}')
    with pytest.raises(
        ValueError, match=r"ITM_SHAPES_DEFAULTS: expected a JSON object of shapes options \(n_train, .*\['n_trian'\]"
    ):
        create("dataset", "shapes")
    monkeypatch.setenv("ITM_SHAPES_DEFAULTS", "n_train=7")
    with pytest.raises(ValueError, match="ITM_SHAPES_DEFAULTS is not valid JSON"):
        create("dataset", "shapes")


def test_scenes_defaults_from_the_environment(monkeypatch):
    """ITM_SCENES_DEFAULTS does for scenes what ITM_SHAPES_DEFAULTS does for shapes, and only for scenes."""
    from itm_core import create

    monkeypatch.setenv("ITM_SCENES_DEFAULTS", '{"n_train": 7, "image_size": 64, "cast": 0.1}')
    assert create("dataset", "scenes").params["n_train"] == 7 and create("dataset", "scenes").params["cast"] == 0.1
    assert create("dataset", "scenes", n_train=9).params == {**create("dataset", "scenes").params, "n_train": 9}
    assert create("dataset", "shapes").params["n_train"] == 2000
    monkeypatch.setenv("ITM_SCENES_DEFAULTS", '{"two_object_fraction": 0.5}')  # a shapes option
    with pytest.raises(
        ValueError,
        match=r"ITM_SCENES_DEFAULTS: expected a JSON object of scenes options \(n_train, "
        r".*max_objects.*\['two_object_fraction'\]",
    ):
        create("dataset", "scenes")
    monkeypatch.setenv("ITM_SCENES_DEFAULTS", "{")
    with pytest.raises(ValueError, match="ITM_SCENES_DEFAULTS is not valid JSON"):
        create("dataset", "scenes")
