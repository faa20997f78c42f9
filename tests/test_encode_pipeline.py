"""The encoding pipeline: one read per image, bad images checked in that pass, shards committed as they
are produced, indexed lookups, compiled inference that matches eager, and Dask workers filling the cache."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from itm_core import create, hookimpl
from itm_core.components import Encoder
from itm_core.contract.plugins import temporary_plugin
from itm_core.data import DataError, check_images, load_manifest
from itm_core.encode import loader
from itm_core.encode.embed import EmbeddingCache, EncodeOptions, encode, encode_split, encoder_key


@pytest.fixture
def mixed(tmp_path):
    """Two good images with two captions each, and a missing, a corrupt, a truncated and an oversized one."""
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / name)
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all")
    Image.new("RGB", (256, 256), "white").save(tmp_path / "big.png")
    full = (tmp_path / "big.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    rows = [
        ("a.png", "red one"),
        ("a.png", "a red square"),
        ("missing.png", "gone"),
        ("b.png", "blue one"),
        ("corrupt.png", "junk"),
        ("b.png", "a blue square"),
        ("truncated.png", "half"),
        ("big.png", "large"),
    ]
    pd.DataFrame(rows, columns=["image", "caption"]).to_csv(tmp_path / "mixed.csv", index=False)
    return load_manifest(tmp_path / "mixed.csv", split_ratios=(1, 0, 0))


def test_one_pass_reports_the_same_skips_as_the_check(mixed, tmp_path):
    image, text = create("encoder", "color-histogram", bins=2, grid=1), create("encoder", "bow")
    text.fit(mixed.captions)
    options = EncodeOptions(workers=1, batch_size=2, max_pixels=100 * 100)
    kept, features, skipped = encode_split(
        image, text, mixed, EmbeddingCache(tmp_path / "c"), options, on_bad_image="skip"
    )
    checked, reference = check_images(mixed, on_error="skip", max_pixels=100 * 100)
    assert kept.images == checked.images == ["a.png", "b.png"] and kept.captions == checked.captions
    assert {(s.path, s.reason) for s in skipped} == {(s.path, s.reason) for s in reference}
    assert features.image.shape == (2, 8) and features.text.shape == (4, text.dim)
    assert features.caption_image.tolist() == [0, 0, 1, 1]
    assert torch.equal(features.image, image.encode([Image.open(p) for p in kept.image_paths()]))


def test_one_pass_fails_naming_the_file(mixed, tmp_path):
    image, text = create("encoder", "color-histogram", bins=2, grid=1), create("encoder", "bow")
    text.fit(mixed.captions)
    with pytest.raises(DataError, match="missing.png: image file not found.*on_bad_image to 'skip'"):
        encode_split(image, text, mixed, EmbeddingCache(tmp_path / "c"), EncodeOptions(workers=0), on_bad_image="fail")


def test_each_image_is_read_and_decoded_once_then_served_from_the_cache(tiny_shapes, tmp_path, monkeypatch):
    import itm_core.data.images as images

    reads, decodes = [], []
    real_read, real_open = loader.read_image, images.Image.open
    monkeypatch.setattr(loader, "read_image", lambda path, *a, **k: reads.append(path) or real_read(path, *a, **k))
    monkeypatch.setattr(images.Image, "open", lambda fp, *a, **k: decodes.append(fp) or real_open(fp, *a, **k))
    data = tiny_shapes.split("val")
    image, text = create("encoder", "efficientnet-lite0", image_size=64), create("encoder", "minilm")
    cache = EmbeddingCache(tmp_path / "cache")
    options = EncodeOptions(workers=0, batch_size=8)
    _, first, _ = encode_split(image, text, data, cache, options)
    assert sorted(reads) == sorted(str(p) for p in data.image_paths()) and len(decodes) == len(data)
    reads.clear(), decodes.clear()
    _, again, _ = encode_split(image, text, data, cache, options)
    assert reads == [] and decodes == []  # file sizes and times unchanged: not even read to be hashed
    assert torch.equal(first.image, again.image) and torch.equal(first.text, again.text)
    assert torch.allclose(first.image, image.encode([Image.open(p) for p in data.image_paths()]), atol=1e-5)


def test_cached_features_pickle_as_a_reference_to_the_cache(tiny_shapes, tmp_path):
    import pickle

    data = tiny_shapes.split("val")
    image, text = create("encoder", "efficientnet-lite0", image_size=64), create("encoder", "minilm")
    _, features, _ = encode_split(image, text, data, EmbeddingCache(tmp_path / "cache"), EncodeOptions(workers=0))
    blob = pickle.dumps(features)
    assert len(blob) < features.image.numel()  # keys, not the 16 x 6400 + 80 x 384 floats
    back = pickle.loads(blob)
    assert torch.equal(back.image, features.image) and torch.equal(back.text, features.text)
    assert torch.equal(back.caption_image, features.caption_image)
    _, uncached, _ = encode_split(image, text, data, None, EncodeOptions(workers=0))
    assert torch.equal(pickle.loads(pickle.dumps(uncached)).image, uncached.image)  # no cache: pickled whole


class Flaky(Encoder):
    """A text encoder that counts what it encodes and can be told to die after some batches."""

    modality = "text"
    dim = 3
    encoded: list[str] = []
    die_after: int | None = None

    def encode(self, items):
        if Flaky.die_after is not None and len(Flaky.encoded) >= Flaky.die_after:
            raise KeyboardInterrupt("killed")
        Flaky.encoded.extend(items)
        return torch.tensor([[len(t), t.count("a"), 1.0] for t in items], dtype=torch.float32)


class FlakyPlugin:
    @hookimpl
    def register_encoders(self, register):
        register("flaky", Flaky, modality="text")


def test_a_killed_pass_resumes_from_its_last_committed_shard(tmp_path):
    texts = [f"caption {'a' * i}" for i in range(100)]
    cache = EmbeddingCache(tmp_path)
    options = EncodeOptions(text_batch_size=10, shard_size=20)
    Flaky.encoded = []
    with temporary_plugin(FlakyPlugin(), "flaky"):
        enc = create("encoder", "flaky")
        Flaky.die_after = 55
        with pytest.raises(KeyboardInterrupt):
            encode(enc, texts, cache, options=options)
        # 60 rows were encoded; the 20-row shards and the rows pending when it died were committed
        assert cache.count(encoder_key(enc)) == 60
        Flaky.die_after, Flaky.encoded = None, []
        out = encode(enc, texts, cache, options=options)
        assert Flaky.encoded == texts[60:]
        assert out[:, 0].tolist() == [len(t) for t in texts]


def test_lookup_opens_only_the_shards_that_hold_the_keys(tmp_path):
    cache = EmbeddingCache(tmp_path, float16=True)
    for s in range(5):
        keys = [f"k{s}-{i}" for i in range(10)]
        cache.put("enc", keys, {"emb": np.full((10, 4), s + 0.123456, dtype=np.float32)})
    found = cache.lookup("enc", ["k3-1", "k3-7", "nope", "k1-0"])
    assert len(found) == 2 and sorted(len(v) for v in found.values()) == [1, 2]
    out = cache.read_into("enc", found, {}, 4, {"emb": np.float32})
    assert out["emb"].dtype == np.float32
    assert np.allclose(out["emb"][[0, 1, 3], 0], [3.123456, 3.123456, 1.123456], rtol=1e-3)  # stored as float16
    assert cache.count("enc") == 50


class Drifting(Encoder):
    """An image encoder whose "compiled" forward is off by ``drift``."""

    modality = "image"
    dim = 2

    def __init__(self, drift: float = 0.0) -> None:
        self.drift, self.compiled = drift, False

    def set_compiled(self, on: bool) -> None:
        self.compiled = on

    def encode(self, items):
        out = torch.tensor([[float(np.asarray(i).mean()), 1.0] for i in items])
        return out + self.drift if self.compiled else out


class DriftingPlugin:
    @hookimpl
    def register_encoders(self, register):
        register("drifting", Drifting, modality="image")


def test_a_compiled_forward_that_disagrees_with_eager_is_not_used(tiny_shapes, caplog):
    paths = [str(p) for p in tiny_shapes.split("val").image_paths()]
    with temporary_plugin(DriftingPlugin(), "drifting"):
        eager = encode(
            create("encoder", "drifting"), paths, options=EncodeOptions(compile="off", workers=0, batch_size=4)
        )
        close = encode(
            create("encoder", "drifting", drift=1e-6),
            paths,
            options=EncodeOptions(compile="on", workers=0, batch_size=4),
        )
        with caplog.at_level(logging.WARNING):
            far = encode(
                create("encoder", "drifting", drift=1e-2),
                paths,
                options=EncodeOptions(compile="on", workers=0, batch_size=4),
            )
    assert not torch.equal(close, eager) and torch.allclose(close, eager, atol=1e-5)  # compiled after the first batch
    assert torch.equal(far, eager) and "differs from eager" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("mode, runtime", [("torch", "torch"), ("onnxruntime", "onnxruntime"), ("on", "onnxruntime")])
def test_compiled_efficientnet_matches_eager(tiny_shapes, mode, runtime):
    paths = [str(p) for p in tiny_shapes.split("val").image_paths()]
    options = dict(workers=0, batch_size=8)
    eager = encode(
        create("encoder", "efficientnet-lite0", image_size=64), paths, options=EncodeOptions(compile="off", **options)
    )
    enc = create("encoder", "efficientnet-lite0", image_size=64)
    compiled = encode(enc, paths, options=EncodeOptions(compile=mode, **options))
    assert enc.unwrapped._use_compiled == runtime  # the pass switched to that runtime's forward
    assert not torch.equal(compiled, eager) and (compiled - eager).abs().max() <= 1e-4


def test_auto_picks_the_best_runtime_for_large_passes(monkeypatch):
    from itm_core.encode import runtime as rt

    image, text = create("encoder", "efficientnet-lite0", image_size=64), create("encoder", "minilm")
    assert rt.runtimes(image) == ["onnxruntime", "torch"] and rt.runtimes(text) == []
    assert rt.choose_runtime(image, "pooled", rt.AUTO_ITEMS["onnxruntime"], "auto") == "onnxruntime"
    assert (
        rt.choose_runtime(image, "pooled", rt.AUTO_ITEMS["onnxruntime"] - 1, "auto") is None
    )  # too small to repay the export
    assert rt.choose_runtime(image, "tokens", 10**6, "auto") is None  # only pooled features run compiled
    assert (
        rt.choose_runtime(text, "pooled", 10**6, "on") is None
        and rt.choose_runtime(text, "pooled", 10, "onnxruntime") is None
    )
    monkeypatch.setattr(rt, "onnxruntime_installed", lambda: False)
    assert (
        rt.runtimes(image) == ["torch"]
        and rt.choose_runtime(image, "pooled", rt.AUTO_ITEMS["torch"], "auto") == "torch"
    )
    with pytest.raises(ValueError, match=r"compile: onnxruntime needs the onnxruntime package: pip install"):
        rt.choose_runtime(image, "pooled", 10, "onnxruntime")
    with pytest.raises(ValueError, match="compile must be one of auto, on, off, onnxruntime, torch; got 'fast'"):
        rt.choose_runtime(image, "pooled", 10, "fast")


@pytest.mark.slow
def test_dask_workers_fill_the_cache_with_the_local_embeddings(prefect_server, tiny_shapes, tmp_path):
    from flows.dask_encoding import encode_on_dask
    from itm_core.config import EncodingParams, ExecutorParams

    data = tiny_shapes.split("train")
    image, text = create("encoder", "efficientnet-lite0", image_size=64), create("encoder", "minilm")
    cache = EmbeddingCache(tmp_path / "shared")
    encoding = EncodingParams(executor=ExecutorParams(kind="dask", n_workers=2, threads_per_worker=1, shard_images=16))
    shards = encode_on_dask(image, text, data, cache, encoding)
    assert len(shards) == 6 and sum(s["items"] for s in shards[:3]) == len(
        data
    )  # 3 image shards, 3 caption shards (5 x 16 each)
    assert cache.count(encoder_key(image)) == len(data)
    assert cache.count(encoder_key(text)) == len(set(data.captions))
    _, from_cache, _ = encode_split(image, text, data, cache, EncodeOptions(workers=0))
    _, local, _ = encode_split(image, text, data, None, EncodeOptions(workers=0))
    assert (from_cache.image - local.image).abs().max() <= 1e-6
    assert (from_cache.text - local.text).abs().max() <= 1e-6


KILLED_READER = """
import sys, time
from itm_core.encode.loader import iter_images
for batch in iter_images(sys.argv[1:], batch_size=2, workers=2):
    print("batch", flush=True)
    time.sleep(60)  # killed here, with the workers' read-ahead queue full
"""


@pytest.mark.slow
def test_loader_workers_die_with_a_killed_run(tmp_path):
    """kill -9 of a run mid-encoding leaves no loader process behind (they would hold memory, and CPU,
    until the machine restarts)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    paths = []
    for n in range(40):
        Image.new("RGB", (512, 512), (n * 6, 0, 0)).save(tmp_path / f"{n}.png")  # decoded, far more than a pipe holds
        paths.append(str(tmp_path / f"{n}.png"))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_READER, *paths], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "batch"
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) == 2
        time.sleep(1)  # the workers fill their queue and wait
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def running(p: psutil.Process) -> bool:  # an exited worker nobody has reaped yet is a zombie: gone too
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 20
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in workers if running(p)]
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} loader process(es) outlived the killed run"
