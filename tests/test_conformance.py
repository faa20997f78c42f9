"""The conformance kit: every built-in component passes; broken components are caught by rule."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from itm_core import hookimpl
from itm_core.components import Encoder, Fusion
from itm_core.contract.plugins import temporary_plugin
from itm_core.testing import assert_conforms, check_component


@pytest.fixture(scope="module")
def saved_matcher(tmp_path_factory):
    from itm_core import create
    from itm_core.models.matcher import Matcher

    folder = tmp_path_factory.mktemp("matcher") / "m"
    tfidf = create("encoder", "tfidf", max_features=64)
    tfidf.fit(["a red circle", "a blue square", "a green star"])
    torch.manual_seed(0)
    m = Matcher(
        {"name": "color-histogram", "options": {}},
        {"name": "tfidf", "options": {"max_features": 64}},
        6**3 * 4,
        64,
        embed_dim=8,
        hidden_dim=0,
    )
    m.attach_encoders(create("encoder", "color-histogram"), tfidf).save(folder)
    return str(folder)


BUILTINS = [
    ("encoder", "efficientnet-lite0", {"image_size": 64}),
    ("encoder", "minilm", {}),
    ("encoder", "tfidf", {}),
    ("encoder", "color-histogram", {}),
    ("encoder", "bow", {}),
    ("similarity", "cosine", {}),
    ("similarity", "dot", {"scale": 10.0}),
    ("metric", "retrieval", {}),
    ("dataset", "shapes", {"n_train": 8, "n_val": 4, "n_test": 4, "image_size": 48}),
    *[
        ("fusion", name, {"image_dim": 12, "text_dim": 10, "dim": 16})
        for name in ("mean", "weighted", "concat-mlp", "gated", "bilinear", "cross-attention")
    ],
]


@pytest.mark.parametrize(("kind", "name", "options"), BUILTINS, ids=[f"{b[0]}-{b[1]}" for b in BUILTINS])
def test_builtin_components_conform(kind, name, options):
    report = assert_conforms(kind, name, **options)
    assert sum(r.status == "pass" for r in report.results) >= 4


def test_builtin_manifest_dataset_conforms(tiny_shapes):
    assert_conforms("dataset", "manifest", path=str(tiny_shapes.root / "manifest.jsonl"))


def test_builtin_webdataset_dataset_conforms(tiny_shapes, tmp_path):
    from itm_core.data.webdataset import pack

    shards = pack(tiny_shapes, tmp_path / "shards", shard_size=40)
    assert_conforms(
        "dataset",
        "webdataset",
        urls=str(tmp_path / "shards" / f"shard-{{00000..{len(shards) - 1:05d}}}.tar"),
        root=str(tmp_path / "data"),
    )


def test_retrieval_captioner_conforms(saved_matcher):
    assert_conforms(
        "generator",
        "retrieval-captioner",
        matcher=saved_matcher,
        captions=["a red circle", "a blue square", "a green star"],
    )


class BatchNormalised(Encoder):
    """Broken on purpose: each output depends on the rest of the batch, and empty batches crash."""

    modality = "text"
    dim = 4

    def encode(self, items):
        x = torch.tensor([[len(t), t.count("a"), 1.0, 2.0] for t in items])
        return x - x.mean(0)


class Noisy(Encoder):
    """Broken on purpose: random output for the same input."""

    modality = "image"
    dim = 3

    def encode(self, items):
        return torch.rand(len(items), 3)


class NoGradFusion(Fusion):
    image_dim, text_dim, dim = 4, 6, 10

    def fuse(self, image, text):
        return torch.cat([image, text], 1)


class Broken:
    @hookimpl
    def register_encoders(self, register):
        register("batch-normalised", BatchNormalised, modality="text")
        register("noisy", Noisy, modality="image")

    @hookimpl
    def register_fusions(self, register):
        register("plain-concat", NoGradFusion)


def test_broken_components_are_caught_by_rule():
    with temporary_plugin(Broken(), "broken-plugin"):
        report = check_component("encoder", "batch-normalised")
        failed = {r.rule: r.detail for r in report.failures()}
        assert set(failed) == {"batch-size independent", "empty batch"}
        assert "a batch vs. one item at a time" in failed["batch-size independent"]
        assert "returned shape (0,), expected (0, 4)" in failed["empty batch"]
        assert "plugin 'broken-plugin'" in report.summary() and "rule 'batch-size independent'" in report.summary()

        noisy = check_component("encoder", "noisy")
        assert [r.rule for r in noisy.failures()] == ["deterministic", "batch-size independent"]

        fusion = check_component("fusion", "plain-concat")
        assert fusion.ok and {r.rule: r.status for r in fusion.results}["trainable"] == "skip"
        with pytest.raises(AssertionError, match="rule 'deterministic'"):
            assert_conforms("encoder", "noisy")


def test_cli_check_exit_status():
    from cli.main import app

    runner = CliRunner()
    ok = runner.invoke(app, ["plugins", "check", "color-histogram", "-o", "bins=4", "-o", "grid=1"])
    assert ok.exit_code == 0, ok.output
    assert "conforms" in ok.output
    with temporary_plugin(Broken(), "broken-plugin"):
        bad = runner.invoke(app, ["plugins", "check", "noisy"])
    assert bad.exit_code == 1
    assert "broken-plugin" in bad.output and "rule 'deterministic'" in bad.output
    unknown = runner.invoke(app, ["plugins", "check", "shapes", "--kind", "encoder"])
    assert unknown.exit_code == 2 and "no component named 'shapes' of kind 'encoder'" in unknown.output
    wrong = runner.invoke(app, ["plugins", "check", "shapes", "-o", "n_test=0"])
    assert wrong.exit_code == 1 and "rule 'builds'" in wrong.output and "n_test must be at least 1" in wrong.output


def _builtin_components() -> list[tuple[str, str]]:
    from itm_core.contract.plugins import get_plugin_manager
    from itm_core.contract.registry import collect

    builtin = {i.name for i in get_plugin_manager().info.values() if i.builtin}
    return sorted((s.kind, s.name) for specs in collect().values() for s in specs.values() if s.plugin in builtin)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), _builtin_components(), ids=[f"{k}-{n}" for k, n in _builtin_components()])
def test_itm_plugins_check_passes_for_every_builtin_with_no_options(kind, name, tmp_path, monkeypatch):
    """What a user types first: `itm plugins check NAME`. Built-ins whose defaults need a hub
    checkpoint, a champion or a data file declare check options (tiny local stand-ins), so every
    one passes offline, and the check leaves nothing behind (no mlflow.db, no files in the folder)."""
    from cli.main import app

    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["plugins", "check", name, "--kind", kind])
    assert out.exit_code == 0, out.output
    assert "conforms" in out.output
    assert list(tmp_path.iterdir()) == []
