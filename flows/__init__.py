"""Prefect flows: thin orchestration over ``itm_core``. ``FLOWS`` names each flow's function and its
parameter model (in :mod:`itm_core.config`); both are imported only when the flow is asked for, so
listing the flows (``itm --help``) stays fast."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any

from itm_core.errors import ParamsError
from itm_core.ops.console import quiet_libraries

if TYPE_CHECKING:
    from itm_core.config import Params

if os.environ.get("ITM_DEBUG", "0") in ("", "0"):  # flow runs served by `itm up` print what the CLI would
    quiet_libraries()

FLOWS: dict[str, tuple[str, str]] = {
    "retrain": ("flows.retrain:retrain", "RetrainParams"),
    "evaluate": ("flows.evaluate:evaluate", "EvaluateParams"),
    "generate": ("flows.generate:generate", "GenerateParams"),
    "fusion-benchmark": ("flows.fusion_benchmark:fusion_benchmark", "FusionBenchmarkParams"),
    "explain": ("flows.explain:explain", "ExplainParams"),
    "explain-benchmark": ("flows.explain_benchmark:explain_benchmark", "ExplainBenchmarkParams"),
    "generation-benchmark": ("flows.generation_benchmark:generation_benchmark", "GenerationBenchmarkParams"),
    "index": ("flows.index:index", "IndexParams"),
    "search": ("flows.search:search", "SearchParams"),
    "watch-data": ("flows.watch:watch_data", "WatchParams"),
}


def get_flow(name: str) -> tuple[Callable[..., Any], type[Params]]:
    """The flow function and its parameter model; an unknown name fails with the known ones."""
    if name not in FLOWS:
        raise ParamsError(f"unknown flow {name!r}; the flows are: {', '.join(FLOWS)}")
    target, model = FLOWS[name]
    module, attr = target.split(":")
    config = import_module("itm_core.config")
    return getattr(import_module(module), attr), getattr(config, model)
