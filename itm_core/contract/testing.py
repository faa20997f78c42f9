"""A conformance kit for plugin authors: check any registered component against its contract.

``check_component(kind, name, **options)`` builds the component and runs the rules for its kind:
outputs of the right shape, dtype and finiteness, the same results for the same input, results that
do not depend on the batch size, empty and single-item batches, odd inputs (grayscale and RGBA
images, very long or empty text), and the same results on an accelerator when there is one.
``assert_conforms`` does the same inside a plugin's own pytest suite; ``itm plugins check NAME``
runs it from the command line.
"""

from __future__ import annotations

import re
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from itm_core.contract.components import ContractError
from itm_core.contract.conformance import RULES, RuleFailed, RuleSkipped
from itm_core.contract.registry import create, spec
from itm_core.contract.samples import ODD_TEXTS, SAMPLE_TEXTS, odd_images, sample_images, tiny_scorer

__all__ = [
    "ODD_TEXTS",
    "SAMPLE_TEXTS",
    "CheckResult",
    "ConformanceReport",
    "RuleFailed",
    "RuleSkipped",
    "assert_conforms",
    "check_component",
    "odd_images",
    "sample_images",
    "tiny_scorer",
]

Status = Literal["pass", "fail", "skip"]


@dataclass
class CheckResult:
    rule: str
    status: Status
    detail: str = ""


@dataclass
class ConformanceReport:
    kind: str
    name: str
    plugin: str
    results: list[CheckResult] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    def summary(self) -> str:
        label = f"{self.kind} {self.name!r} (plugin {self.plugin!r})"
        if self.ok:
            passed = sum(r.status == "pass" for r in self.results)
            return f"{label} conforms: {passed} rules passed, {len(self.results) - passed} skipped"
        return f"{label} breaks " + "; ".join(f"rule '{r.rule}': {r.detail}" for r in self.failures())


def check_component(kind: str, name: str, defaults: bool = True, **options: Any) -> ConformanceReport:
    """Build ``kind``/``name`` with ``options`` and run every rule of its kind.

    With ``defaults`` (the default) the component's declared ``check_options`` come first and
    ``options`` override them, so a built-in whose defaults need a hub checkpoint, a registered
    model or a data file is checked against a small local stand-in (see ``plugins/check_setups.py``).
    """
    s = spec(kind, name)
    report = ConformanceReport(kind, name, s.plugin)
    with tempfile.TemporaryDirectory(prefix=f"itm-check-{name}-") as scratch:
        try:
            declared = s.check_options(Path(scratch)) if defaults else {}
        except Exception as exc:
            report.results.append(
                CheckResult("builds", "fail", f"its check_options could not be prepared: {type(exc).__name__}: {exc}")
            )
            return report
        report.options = {**declared, **options}

        def build(**extra: Any) -> Any:
            return create(kind, name, **{**report.options, **extra})

        try:
            component = build()
            rules = RULES[kind](component, build)
        except Exception as exc:  # a component that cannot be built fails the first rule
            report.results.append(CheckResult("builds", "fail", f"{type(exc).__name__}: {exc}"))
            return report
        report.results.append(CheckResult("builds", "pass", _shown(report.options)))
        for rule, check in rules.items():
            try:
                detail = check()
                report.results.append(CheckResult(rule, "pass", detail or ""))
            except RuleSkipped as exc:
                report.results.append(CheckResult(rule, "skip", str(exc)))
            except (RuleFailed, ContractError) as exc:
                report.results.append(CheckResult(rule, "fail", str(exc)))
            except Exception as exc:
                where = traceback.extract_tb(exc.__traceback__)[-1]
                report.results.append(
                    CheckResult(
                        rule, "fail", f"raised {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
                    )
                )
    return report


def _shown(options: dict[str, Any]) -> str:
    """The options a component was built with, scratch-folder paths shortened, for the report."""
    if not options:
        return "with its defaults"
    text = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return "with " + re.sub(r"/[^'\"\s]*itm-check-[^/'\"\s]*/", "<scratch>/", text)[:300]


def assert_conforms(kind: str, name: str, **options: Any) -> ConformanceReport:
    """For a plugin's own tests: raise ``AssertionError`` naming every broken rule."""
    report = check_component(kind, name, **options)
    if not report.ok:
        raise AssertionError(report.summary())
    return report
