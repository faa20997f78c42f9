"""The documentation site's generated reference: the flow parameter tables come from the models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from flows import FLOWS
from itm_core.models.training import ContrastiveTraining
from itm_core.ops.promotion import PromotionOptions

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_reference_is_generated_from_the_models():
    text = _hooks().parameter_reference()
    for flow in FLOWS:
        assert f"## {flow}\n" in text
    epochs = ContrastiveTraining.model_fields["epochs"]
    assert f"| `epochs` | int | `{epochs.default}` | {epochs.description} |" in text
    assert "### PromotionOptions" in text and f"`{PromotionOptions().min_test_images}`" in text
    # the text-to-image union lists each model family, each with its own table
    assert "[CVAEOptions](#cvaeoptions) or [GANOptions](#ganoptions)" in text and "### DiffusionOptions" in text


def test_the_marker_is_replaced_only_on_its_page():
    hooks = _hooks()
    assert hooks.on_page_markdown("no marker here", None, None, None) == "no marker here"
    page = (ROOT / "docs" / "reference" / "parameters.md").read_text()
    assert hooks.MARKER in page and hooks.MARKER not in hooks.on_page_markdown(page, None, None, None)


def test_every_page_of_the_nav_exists():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.Loader)

    def pages(nav):
        for item in nav:
            for value in item.values():
                yield from pages(value) if isinstance(value, list) else [value]

    assert all((ROOT / "docs" / p).is_file() for p in pages(config["nav"]))
