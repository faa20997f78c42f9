"""One family of user errors: the CLI prints them as one line and keeps the traceback of anything else."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from itm_core import create
from itm_core.errors import DataError, ModelError, OptionsError, ParamsError, PluginError, StackError, UserError


def test_every_user_facing_error_is_a_user_error_and_keeps_its_builtin_base():
    from itm_core.contract.components import ContractError
    from itm_core.contract.params import ParamsFileError
    from itm_core.contract.registry import RegistryError
    from itm_core.contract.state import StateFormatError
    from itm_core.models.search_index import SearchIndexError

    family = {
        DataError: ValueError,
        ParamsError: ValueError,
        ParamsFileError: ValueError,
        OptionsError: ValueError,
        RegistryError: LookupError,
        ModelError: LookupError,
        SearchIndexError: LookupError,
        StateFormatError: ValueError,
        ContractError: RuntimeError,
        StackError: RuntimeError,
    }
    for cls, builtin in family.items():
        assert issubclass(cls, UserError) and issubclass(cls, builtin), cls
    assert issubclass(ContractError, PluginError) and issubclass(RegistryError, PluginError)


def test_options_a_factory_refuses_name_the_component_and_its_plugin():
    with pytest.raises(OptionsError, match=r"dataset 'scenes' \(plugin 'scenes'\) rejected options \['clutter'\]: "):
        create("dataset", "scenes", clutter=100)
    with pytest.raises(OptionsError, match=r"encoder 'tfidf' \(plugin 'classic'\) rejected options \['bogus'\]"):
        create("encoder", "tfidf", bogus=1)


def test_the_cli_prints_a_user_error_as_one_line_and_a_bug_with_its_traceback(monkeypatch):
    import flows
    from cli.main import app
    from itm_core.config import EvaluateParams

    out = CliRunner().invoke(app, ["run", "no-such-flow"])
    assert out.exit_code == 2
    assert out.output.strip().startswith("error: unknown flow 'no-such-flow'; the flows are: retrain, evaluate")
    assert len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output

    def failing(params: EvaluateParams) -> None:
        raise DataError("flow: the file pairs.csv has no column 'caption'")

    monkeypatch.setattr(flows, "get_flow", lambda name: (failing, EvaluateParams))
    out = CliRunner().invoke(app, ["run", "evaluate"])
    assert out.exit_code == 2 and out.output.strip() == "error: flow: the file pairs.csv has no column 'caption'"

    def buggy(params: EvaluateParams) -> None:
        return {"a": 1}["b"]  # a bug, not bad input

    monkeypatch.setattr(flows, "get_flow", lambda name: (buggy, EvaluateParams))
    out = CliRunner().invoke(app, ["run", "evaluate"])
    assert out.exit_code == 1 and isinstance(out.exception, KeyError)  # raised, not printed as a user error
    assert "error:" not in out.output
