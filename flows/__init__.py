"""Prefect flows: thin orchestration over ``itm_core``. ``FLOWS`` maps each flow to its parameter model."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import import_module
from typing import Any

from itm_core.ops.console import quiet_libraries

if os.environ.get("ITM_DEBUG", "0") in ("", "0"):  # flow runs served by `itm up` print what the CLI would
    quiet_libraries()

from itm_core.config import (
    EvaluateParams,
    ExplainBenchmarkParams,
    ExplainParams,
    FusionBenchmarkParams,
    GenerateParams,
    GenerationBenchmarkParams,
    IndexParams,
    Params,
    RetrainParams,
    SearchParams,
)
from itm_core.errors import ParamsError

FLOWS: dict[str, tuple[str, type[Params]]] = {
    "retrain": ("flows.retrain:retrain", RetrainParams),
    "evaluate": ("flows.evaluate:evaluate", EvaluateParams),
    "generate": ("flows.generate:generate", GenerateParams),
    "fusion-benchmark": ("flows.fusion_benchmark:fusion_benchmark", FusionBenchmarkParams),
    "explain": ("flows.explain:explain", ExplainParams),
    "explain-benchmark": ("flows.explain_benchmark:explain_benchmark", ExplainBenchmarkParams),
    "generation-benchmark": ("flows.generation_benchmark:generation_benchmark", GenerationBenchmarkParams),
    "index": ("flows.index:index", IndexParams),
    "search": ("flows.search:search", SearchParams),
}


def get_flow(name: str) -> tuple[Callable[..., Any], type[Params]]:
    """The flow function and its parameter model; an unknown name fails with the known ones."""
    if name not in FLOWS:
        raise ParamsError(f"unknown flow {name!r}; the flows are: {', '.join(FLOWS)}")
    target, model = FLOWS[name]
    module, attr = target.split(":")
    return getattr(import_module(module), attr), model
