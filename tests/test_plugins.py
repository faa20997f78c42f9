"""The plugin manager, the registry and the output contracts."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import itm_core
from itm_core import ContractError, OptionsError, RegistryError, create, hookimpl
from itm_core.components import Encoder
from itm_core.contract.plugins import get_plugin_manager, temporary_plugin

BUILTIN_COMPONENTS = {
    ("encoder", "efficientnet-lite0"),
    ("encoder", "minilm"),
    ("encoder", "tfidf"),
    ("encoder", "color-histogram"),
    ("similarity", "cosine"),
    ("similarity", "dot"),
    ("metric", "retrieval"),
    ("generator", "retrieval-captioner"),
    ("dataset", "shapes"),
    ("dataset", "manifest"),
}


def test_builtins_load_through_entry_points():
    pm = get_plugin_manager()
    infos = {i.name: i for i in pm.info.values()}
    assert {
        "shapes",
        "efficientnet",
        "minilm",
        "classic",
        "similarity",
        "retrieval",
        "retrieval-captioner",
        "manifest",
    } <= set(infos)
    assert all(
        i.builtin and i.distribution == "itm-workbench" and not i.error
        for i in infos.values()
        if i.name in {"shapes", "minilm"}
    )
    found = {(kind, name) for kind in itm_core.components.KINDS for name in itm_core.names(kind)}
    assert found >= BUILTIN_COMPONENTS


def test_unknown_name_lists_known_ones():
    with pytest.raises(RegistryError) as e:
        create("similarity", "cosin")
    assert "cosine" in str(e.value) and "dot" in str(e.value) and "Did you mean 'cosine'" in str(e.value)
    with pytest.raises(RegistryError, match="unknown component kind 'encoders'"):
        create("encoders", "minilm")


class _Constant(Encoder):
    modality = "text"

    def __init__(self, dim: int = 3, value: float = 1.0, rows_off: int = 0):
        self.dim, self.value, self.rows_off = dim, value, rows_off

    def encode(self, items):
        return torch.full((len(items) + self.rows_off, self.dim), self.value)


class _ConstantPlugin:
    @hookimpl
    def register_encoders(self, register):
        register("constant", _Constant, modality="text")


def test_temporary_plugin_registers_and_unregisters():
    with temporary_plugin(_ConstantPlugin(), "constant-plugin"):
        enc = create("encoder", "constant", dim=4)
        assert enc.encode(["a", "b"]).shape == (2, 4)
        assert enc.plugin == "constant-plugin"
    with pytest.raises(RegistryError):
        create("encoder", "constant")


def test_duplicate_registration_names_both_plugins():
    class Again:
        @hookimpl
        def register_encoders(self, register):
            register("constant", _Constant, modality="text")

    with temporary_plugin(_ConstantPlugin(), "first-plugin"), temporary_plugin(Again(), "second-plugin"):
        with pytest.raises(RegistryError) as e:
            create("encoder", "constant")
    message = str(e.value)
    assert "first-plugin" in message and "second-plugin" in message and "'constant'" in message


@pytest.mark.parametrize(
    ("options", "rule"),
    [
        ({"rows_off": 1}, r"shape \(3, 3\), expected \(2, 3\)"),
        ({"value": float("nan")}, "non-finite"),
        ({"value": float("inf")}, "non-finite"),
    ],
)
def test_contract_violations_name_the_plugin(options, rule):
    with temporary_plugin(_ConstantPlugin(), "sloppy-plugin"):
        enc = create("encoder", "constant", **options)
        with pytest.raises(ContractError, match=rule) as e:
            enc.encode(["a", "b"])
    assert "plugin 'sloppy-plugin'" in str(e.value) and "encoder 'constant'" in str(e.value)


def test_contract_rejects_integer_output_and_bad_modality():
    class IntEncoder(_Constant):
        def encode(self, items):
            return torch.ones(len(items), self.dim, dtype=torch.long)

    class Weird(_Constant):
        modality = "audio"

    class P:
        @hookimpl
        def register_encoders(self, register):
            register("ints", IntEncoder)
            register("weird", Weird)

    with temporary_plugin(P(), "p"):
        with pytest.raises(ContractError, match="floating-point"):
            create("encoder", "ints").encode(["x"])
        with pytest.raises(ContractError, match="modality 'audio'"):
            create("encoder", "weird")


def test_factory_option_errors_name_the_component():
    with pytest.raises(OptionsError, match=r"similarity 'cosine' \(plugin 'similarity'\) rejected options \['bogus'\]"):
        create("similarity", "cosine", bogus=1)


def test_plugin_with_unknown_hook_is_skipped_and_reported():
    class Typo:
        @hookimpl
        def register_encoder(self, register):  # misspelt hook
            pass

    pm = get_plugin_manager()
    from itm_core.contract.plugins import PluginInfo

    info = PluginInfo(name="typo-plugin")
    assert not pm.register_plugin(Typo(), info)
    try:
        assert "register_encoder" in info.error
        assert not pm.has_plugin("typo-plugin")
        assert create("similarity", "cosine") is not None  # the rest keep working
    finally:
        pm.info.pop("typo-plugin", None)


@pytest.fixture
def external_plugins(tmp_path, monkeypatch):
    """Two installed third-party distributions: one good plugin and one that fails to import."""
    site = tmp_path / "site"
    (site / "goodpkg").mkdir(parents=True)
    (site / "goodpkg" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch
            from itm_core import hookimpl

            class Neg:
                def score(self, a, b):
                    return -torch.cdist(a.float(), b.float())

            @hookimpl
            def register_similarities(register):
                register("neg-euclidean", Neg, description="negative distance")
            """
        )
    )
    for dist, module in (("goodpkg", "goodpkg"), ("badpkg", "badpkg_missing_module")):
        info = site / f"{dist}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[itm]\n{dist} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    yield
    for mod in ("goodpkg",):
        sys.modules.pop(mod, None)


def test_external_plugin_loads_and_broken_one_is_reported(external_plugins, fresh_plugins):
    pm = get_plugin_manager()
    assert pm.info["goodpkg"].version == "1.2.3" and not pm.info["goodpkg"].builtin
    assert "badpkg_missing_module" in pm.info["badpkg"].error
    s = create("similarity", "neg-euclidean")
    assert s.score(torch.zeros(2, 3), torch.ones(4, 3)).shape == (2, 4)
    assert create("similarity", "cosine") is not None


def test_itm_plugins_allow_list(external_plugins, fresh_plugins, monkeypatch):
    monkeypatch.setenv("ITM_PLUGINS", "badpkg")
    pm = get_plugin_manager()
    assert "goodpkg" not in pm.info and "badpkg" in pm.info
    assert "minilm" in pm.info  # built-ins always load
    with pytest.raises(RegistryError):
        create("similarity", "neg-euclidean")


def test_itm_disable_plugins(external_plugins, fresh_plugins, monkeypatch):
    monkeypatch.setenv("ITM_DISABLE_PLUGINS", "badpkg, classic")
    pm = get_plugin_manager()
    assert "badpkg" not in pm.info and "classic" not in pm.info and "goodpkg" in pm.info
    assert "tfidf" not in itm_core.names("encoder")


def test_cli_plugins_json(external_plugins, fresh_plugins):
    from cli.main import app

    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    by_name = {p["name"]: p for p in listing}
    assert set(by_name["similarity"]) >= {"name", "version", "hooks", "components"}
    assert by_name["similarity"]["hooks"] == ["register_similarities"]
    assert {"kind": "similarity", "name": "cosine", "description": "Cosine similarity", "available": True} in by_name[
        "similarity"
    ]["components"]
    minilm = by_name["minilm"]["components"][0]
    assert minilm["modality"] == "text" and minilm["dim"] == 384
    assert by_name["goodpkg"]["version"] == "1.2.3"
    assert "badpkg_missing_module" in by_name["badpkg"]["error"]

    table = CliRunner().invoke(app, ["plugins"])
    assert table.exit_code == 0 and "goodpkg" in table.stdout and "failed" in table.stdout


def test_component_with_missing_dependency_is_listed_unavailable():
    from cli.main import plugin_listing

    class Needy:
        @hookimpl
        def register_encoders(self, register):
            register("needy", _Constant, modality="text", requires=["itm-no-such-package", "torch"])

    with temporary_plugin(Needy(), "needy-plugin"):
        listing = {p["name"]: p for p in plugin_listing()}
        component = listing["needy-plugin"]["components"][0]
        assert component["available"] is False and component["install"] == "pip install itm-no-such-package"
        assert all(c["available"] for c in listing["minilm"]["components"])
        with pytest.raises(
            RegistryError, match="needs itm-no-such-package, which is not installed: pip install itm-no-such-package"
        ):
            create("encoder", "needy")
