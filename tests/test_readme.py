"""The manual runs as written: every code block of README.md and of the documentation site's pages
(in the order of its navigation), then of the example plugin's README, in order, in a fresh working
folder per document (README.md and the site share one, as one reader goes through them), as a user
who has run `make install` would (``itm`` and ``pytest`` on the PATH from ``.venv``, nothing else
configured: the store in ``./.itm``). ``ITM_SHAPES_DEFAULTS`` and ``ITM_SCENES_DEFAULTS`` keep the
built-in data small. How a block is tested is said by the ``readme-test`` marker above it (see
``tests/readme_blocks.py``); a block that needs a network, a GPU, real data or a server that runs
until stopped is skipped with that reason, and an edit that breaks a command fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from readme_blocks import Block, parse

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _site_pages() -> list[str]:
    """The documentation site's pages in the order of its navigation (mkdocs.yml)."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.Loader)  # the site's own config

    def pages(nav: list) -> list[str]:
        found: list[str] = []
        for item in nav:
            for value in item.values():
                found += pages(value) if isinstance(value, list) else [value]
        return found

    return pages(config["nav"])


MANUAL = "the manual"  # README.md and the site's pages: one reader, one workspace, in reading order
DOCUMENTS = [
    (ROOT / "README.md", "README.md"),
    *((ROOT / "docs" / page, f"docs/{page}") for page in _site_pages()),
    (ROOT / "examples" / "itm-plugin-example" / "README.md", "examples/itm-plugin-example/README.md"),
]
BLOCKS = [b for path, name in DOCUMENTS for b in parse(path, name)]
SMALL_DATA = {"n_train": 64, "n_val": 16, "n_test": 16, "image_size": 64}  # for shapes and scenes
PLUGINS_INSTALLED = ("itm-plugin-mine", "itm-plugin-example")  # what the walk-throughs pip install into .venv

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


class Workspace:
    """A folder that looks like the workbench checkout from inside (the files the README's commands
    name are links to this checkout's), with its own MLflow store, data and Prefect home."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "checkout"
        self.dir.mkdir()
        for name in (".venv", "Makefile", "pyproject.toml", "prefect.yaml", "examples", "tests"):
            (self.dir / name).symlink_to(ROOT / name)

    def env(self) -> dict[str, str]:
        from prefect.settings import PREFECT_API_URL

        env = {k: v for k, v in os.environ.items() if not k.startswith(("ITM_", "MLFLOW_", "PYTEST_"))}
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            VIRTUAL_ENV=str(VENV_BIN.parent),
            ITM_SHAPES_DEFAULTS=json.dumps(SMALL_DATA),
            ITM_SCENES_DEFAULTS=json.dumps(SMALL_DATA),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PREFECT_API_URL=str(PREFECT_API_URL.value()),  # the session's server: a flow run needs no temporary one
            PREFECT_HOME=str(self.dir.parent / "prefect-home"),
            PIP_NO_INDEX="1",
            PIP_NO_BUILD_ISOLATION="0",
            PIP_DISABLE_PIP_VERSION_CHECK="1",  # offline installs
        )
        return env

    def run(self, script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=self.dir,
            env=self.env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=1500,
        )


def _uninstall_walkthrough_plugins() -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *PLUGINS_INSTALLED], capture_output=True
    )


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory, prefect_server):
    made: dict[str, Workspace] = {}

    def get(document: str) -> Workspace:
        document = MANUAL if document == "README.md" or document.startswith("docs/") else document
        if document not in made:
            _uninstall_walkthrough_plugins()  # one document's plugin never meets another's (they share component names)
            made[document] = Workspace(tmp_path_factory.mktemp("readme"))
        return made[document]

    yield get
    _uninstall_walkthrough_plugins()
    from itm_core.contract.plugins import reset_plugin_manager

    reset_plugin_manager()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block: Block, workspaces):
    if block.skip:
        pytest.skip(block.skip)
    ws = workspaces(block.document)
    if block.language in ("yaml", "json"):
        if block.file:
            (ws.dir / block.file).write_text(block.text)
            return
        assert block.validate, (
            f"{block.id}: a {block.language} block needs a readme-test marker (file NAME, validate MODEL or skip "
            "REASON)"
        )
        import itm_core.config as config

        model = getattr(config, block.validate[0])
        model.model_validate(yaml.safe_load(block.text))
        return
    assert block.language in ("bash", "python"), (
        f"{block.id}: no way to run a {block.language!r} block; mark it skip with a reason"
    )
    for command in block.before:
        setup = ws.run(command)
        assert setup.returncode == 0, f"{block.id}: set-up {command!r} failed:\n{setup.stderr[-3000:]}"
    lines, left_out = block.commands()
    if block.language == "python":
        script = f"{shutil.which('python', path=ws.env()['PATH'])} - <<'PYTHON'\n" + "\n".join(lines) + "\nPYTHON\n"
    else:
        script = "\n".join(lines)
    result = ws.run(script)
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{block.id} failed (exit {result.returncode}):\n{block.text}\n--- output (last 6000 characters) "
        f"---\n{output[-6000:]}"
    )
    for text in block.expect:
        assert text in output, f"{block.id}: output does not contain {text!r}:\n{output[-4000:]}"
    if left_out:
        print(f"{block.id}: not run: " + "; ".join(left_out))


def test_every_block_is_accounted_for():
    """Markers are spelt right and every block can be tested: the parse sees the blocks of both files,
    a skipped block says why, and the set of skipped blocks is the one reviewed here."""
    assert len(BLOCKS) >= 20
    skipped = {b.id: b.skip for b in BLOCKS if b.skip}
    assert all(reason and len(reason) > 10 for reason in skipped.values())
    assert len(skipped) <= 8, skipped  # network, real data and long-running servers only
    for b in BLOCKS:
        if b.language in ("yaml", "json"):
            assert b.file or b.validate or b.skip, b.id
