"""What the benchmarks share: the built-in data at a size, timing, the machine, and a retrain run
as a subprocess (its wall time and peak memory)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

PYTHON = sys.executable
Row = dict[str, Any]

Row = dict[str, Any]


def shapes_dataset(n_train: int, n_eval: int, home: Path) -> Any:
    from itm_core import create

    os.environ["ITM_HOME"] = str(home)
    return create("dataset", "shapes", n_train=n_train, n_val=n_eval, n_test=n_eval).load()


def sample_captions(n: int) -> list[str]:
    """``n`` short shapes-style captions (48 distinct, repeated)."""
    texts = [
        f"a {s} {c} {sh} on the {p}"
        for s in ("small", "large")
        for c in ("red", "green", "blue", "yellow")
        for sh in ("circle", "square", "star")
        for p in ("left", "right")
    ]
    return (texts * (n // len(texts) + 1))[:n]


def feature_bytes(images: int, captions: int) -> int:
    """The size of the float32 feature tensors of a retrain: efficientnet-lite0 (6400) per image,
    MiniLM (384) per caption."""
    return (images * 6400 + captions * 384) * 4


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def cpu_bf16_note() -> str:
    """Which bfloat16 instructions this CPU has, from /proc/cpuinfo (Linux)."""
    from itm_core.models.loop import cpu_bf16_flags

    return ", ".join(cpu_bf16_flags()) or "none (emulated, slow) or unknown"


def retrain_params_file(home: Path, options: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    params = {"dataset": {"options": options}, **(extra or {})}
    path = home / f"retrain-{abs(hash(json.dumps(params, sort_keys=True)))}.json"
    path.write_text(json.dumps(params))
    return path


def run_retrain(home: Path, options: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``itm run retrain`` in a child process from a cold embedding cache: wall time and peak RSS."""
    return run_flow(home, "retrain", options, extra)


def run_flow(home: Path, flow: str, options: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``itm run FLOW`` in a child process from a cold embedding cache: wall time, peak RSS and the
    JSON result it prints."""
    env = {
        **os.environ,
        "ITM_HOME": str(home),
        "ITM_CACHE_DIR": tempfile.mkdtemp(dir=home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PREFECT_HOME": str(home / "prefect"),
    }
    out, err = home / f"{flow}.out", home / f"{flow}.err"
    start = time.perf_counter()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [Path(PYTHON).parent / "itm", "run", flow, "--params", str(retrain_params_file(home, options, extra))],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (as /usr/bin/time -v reports it)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"itm run {flow} failed:\n{err.read_text()[-3000:]}")
    text = out.read_text()
    first = min(i for i in (text.find("{"), text.find("[")) if i >= 0)
    return {"wall": wall, "rss": usage.ru_maxrss * 1024, "result": json.loads(text[first:])}


def fit_tfidf(data: Any) -> Any:
    from itm_core import create

    enc = create("encoder", "tfidf", max_features=256)
    enc.fit(list(data.captions))
    return enc


def machine() -> str:
    import torch

    import itm_core

    return (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), itm-workbench {itm_core.__version__}"
    )
