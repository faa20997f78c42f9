"""`make bench`: speed and scale of the data path, each figure a ratio against a plain reference
measured on the same machine in the same run. Results go to ``benchmarks/results.json`` (one entry
per benchmark, kept across runs so the long ``--only flickr`` run can be added) and are rendered as
``benchmarks/RESULTS.md``.

    python -m benchmarks.run                 # the standard set (about 28 minutes on 2 cores)
    python -m benchmarks.run --quick         # every benchmark on tiny inputs (checks that each runs)
    python -m benchmarks.run --only flickr   # retrain on a Flickr30k-size shapes
    python -m benchmarks.run --only fusion   # the default fusion benchmark, as a user runs it
    python -m benchmarks.run --only coco     # retrain on a COCO-size shapes (about 40 minutes)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.cache import bench_cache, bench_kill
from benchmarks.common import HERE, Row, feature_bytes, machine
from benchmarks.condition import bench_condition
from benchmarks.encoding import bench_encoding
from benchmarks.fusion import bench_fusion
from benchmarks.retrieval import bench_retrieval
from benchmarks.scale import bench_coco, bench_dask, bench_flickr, bench_overhead, bench_scaling
from benchmarks.search import bench_search
from benchmarks.serving import bench_serving
from benchmarks.session import bench_search_session
from benchmarks.training import bench_generator_training, bench_training


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run`); each figure is a ratio against a plain reference",
        "measured on the same machine in the same run. Re-run to refresh; `--only flickr fusion coco` adds the long",
        "runs.",
        "",
    ]
    for name, entry in results.items():
        lines += [
            f"## {name}",
            "",
            f"{entry['date']}, {entry['machine']}, `{entry['command']}`",
            "",
            "| what | value | reference | reference value | ratio | target | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in entry["rows"]:
            fmt = lambda v: "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
            note = r.get("note", "").replace("|", "\\|")
            lines.append(
                f"| {r['what']} | {fmt(r['value'])} | {r['reference']} | {fmt(r.get('ref_value'))} | "
                f"{fmt(r.get('ratio'))}{'x' if r.get('ratio') else ''} | {r['target']} | {note} |"
            )
        lines.append("")
    return "\n".join(lines + coco_projection(results))


COCO_IMAGES, COCO_CAPTIONS = 123_287, 616_767


def coco_projection(results: dict[str, Any]) -> list[str]:
    """Peak RSS of a COCO-size retrain, extrapolated along the line through the two largest runs
    measured with the default settings (what grows with the data, at the rate measured), and along
    the line through the largest default run and the largest run of all when their settings differ
    (the Flickr run's int8 text tower may add fixed memory, which that slope counts as growth)."""
    rows = [r for name in ("scaling", "flickr") for r in results.get(name, {}).get("rows", []) if "rss_gib" in r]
    default = sorted((r["images"], r["rss_gib"]) for r in rows if r.get("settings", "default") == "default")
    every = sorted((r["images"], r["rss_gib"], r.get("settings", "default")) for r in rows)
    if len(default) < 2 or default[-1][0] == default[-2][0]:
        return []
    features = feature_bytes(COCO_IMAGES, COCO_CAPTIONS) / 2**30

    def line(n1: int, m1: float, n2: int, m2: float) -> tuple[float, float]:
        slope = (m2 - m1) / (n2 - n1)
        return slope, m2 + slope * (COCO_IMAGES - n2)

    (n1, m1), (n2, m2) = default[-2:]
    slope, projected = line(n1, m1, n2, m2)
    text = [
        f"Peak RSS measured with the default settings at {n1:,} images: {m1:.2f} GiB; at {n2:,}: {m2:.2f} GiB; growth "
        f"{slope * 2**20:.1f} KiB per image (its features: {feature_bytes(1, 5) / 1024:.1f} KiB). Along that line a "
        "COCO-size "
        f"retrain ({COCO_IMAGES:,} images, {COCO_CAPTIONS:,} captions; {features:.2f} GiB of features) peaks at about "
        f"**{projected:.1f} GiB** ({projected / features:.2f}x its features), against the 8 GB budget."
    ]
    n3, m3, settings = every[-1]
    if n3 > n2 and settings != "default":
        slope3, upper = line(n2, m2, n3, m3)
        text.append(
            f"The largest run ({n3:,} images, {m3:.2f} GiB) used other settings ({settings}), whose fixed memory may "
            "differ; "
            f"the line from the {n2:,}-image default run through it ({slope3 * 2**20:.1f} KiB per image) counts any "
            "difference as growth "
            f"and gives an upper bound of **{upper:.1f} GiB**."
        )
    measured = [r for r in results.get("coco", {}).get("rows", []) if "rss_gib" in r]
    if measured:
        text.append(f"The COCO-size run itself (section coco) peaked at **{measured[0]['rss_gib']:.2f} GiB**.")
    return ["## COCO-size projection", "", " ".join(text), ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny inputs: checks that every benchmark runs")
    parser.add_argument("--only", nargs="*", help="benchmark names to run (default: all but flickr and fusion)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    home = Path(tempfile.mkdtemp(prefix="itm-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    q = args.quick
    suite: dict[str, Callable[[], list[Row]]] = {
        "encoding": lambda: bench_encoding(128 if q else 1000, home, 1 if q else 2),
        "cache": lambda: bench_cache(64 if q else 2000, home),
        "kill": lambda: bench_kill(128 if q else 2000, home, 32 if q else 256),
        "retrieval": lambda: bench_retrieval(500 if q else 5000),
        "training": lambda: bench_training(512 if q else 4000, 1 if q else 3, 1 if q else 3),
        "generator": lambda: bench_generator_training(128 if q else 1000, 1 if q else 2, 1 if q else 2),
        "overhead": lambda: bench_overhead((48, 96) if q else (200, 800), home, 2 if q else 3),
        "scaling": lambda: bench_scaling([64, 128] if q else [2000, 8000], home, 32 if q else 500),
        "dask": lambda: bench_dask(64 if q else 2048, home),
        "search": lambda: bench_search(20_000 if q else 1_000_000, 200 if q else 1000),
        "session": lambda: bench_search_session(10_000 if q else 100_000, 20 if q else 200, home),
        "serving": lambda: bench_serving(40 if q else 500, 8, home, 40 if q else 1000, 16),
        "condition": lambda: bench_condition(600 if q else 12000, 2 if q else 15),
        "flickr": lambda: bench_flickr(home, q),
        "fusion": lambda: bench_fusion(home, q),
        "coco": lambda: bench_coco(home, q),
    }
    long = ("flickr", "fusion", "coco")  # run with --only: each takes 10 to 45 minutes
    chosen = args.only or [n for n in suite if n not in long]
    unknown = sorted(set(chosen) - set(suite))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {', '.join(suite)}")
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    command = (
        "python -m benchmarks.run" + (" --quick" if q else "") + (f" --only {' '.join(args.only)}" if args.only else "")
    )
    for name in chosen:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        rows = suite[name]()
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
        for r in rows:
            print(f"   {r['what']}: {r['value']:.4g} vs {r.get('ref_value')} -> {r.get('ratio')}", flush=True)
        results[name] = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "command": command,
            "rows": rows,
        }
        store.write_text(json.dumps(results, indent=1))
        (args.out / "RESULTS.md").write_text(render(results))


if __name__ == "__main__":
    main()
