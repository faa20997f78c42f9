"""The served models under concurrent clients: throughput and latency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PYTHON,
    Row,
    fit_tfidf,
    shapes_dataset,
)


def _hammer(
    model_uri: str,
    home: Path,
    requests: int,
    clients: int,
    body: Callable[[int], dict[str, Any]],
    check: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """``mlflow models serve`` of ``model_uri`` on loopback, then ``requests`` POSTs from ``clients`` threads."""
    import concurrent.futures as cf
    import socket
    import urllib.request

    import mlflow
    import numpy as np

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log_path = home / f"serve-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until it is stopped below
    server = subprocess.Popen(
        [
            str(Path(PYTHON).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text()[-2000:]) from None
                time.sleep(1)

        def one(i: int) -> tuple[float, int]:
            request = urllib.request.Request(
                f"{url}/invocations", data=json.dumps(body(i)).encode(), headers={"Content-Type": "application/json"}
            )
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=60) as resp:
                    ok = resp.status == 200 and check(json.loads(resp.read()))
            except OSError:
                ok = False
            return time.perf_counter() - t0, int(not ok)

        start = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            got = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()
    latency = np.array([t for t, _ in got])
    return {
        "rps": requests / wall,
        "errors": sum(e for _, e in got),
        "p50": float(np.percentile(latency, 50) * 1e3),
        "p99": float(np.percentile(latency, 99) * 1e3),
    }


def bench_serving(requests: int, clients: int, home: Path, matcher_requests: int, matcher_clients: int) -> list[Row]:
    """The served search model and the served matcher, each hammered by concurrent clients on loopback."""
    import base64

    import mlflow
    import pandas as pd

    from itm_core import create
    from itm_core.models.matcher import Matcher
    from itm_core.models.search_index import SearchIndex
    from itm_core.ops.search import SearchBundle, log_search_model
    from itm_core.ops.tracking import log_matcher

    data = shapes_dataset(200, 50, home)
    tfidf = fit_tfidf(data)
    histogram = create("encoder", "color-histogram")
    matcher = Matcher(
        {"name": "color-histogram", "options": {}},
        {"name": "tfidf", "options": {"max_features": 256}},
        int(histogram.dim),
        int(tfidf.dim),
        embed_dim=64,
        hidden_dim=0,
    ).attach_encoders(histogram, tfidf)
    vectors = matcher.embed_images([str(p) for p in data.image_paths()]).numpy()
    index = SearchIndex.build(vectors, pd.DataFrame({"image": [str(p) for p in data.image_paths()]}))
    mlflow.set_tracking_uri(f"sqlite:///{home / 'serving.db'}")
    if mlflow.get_experiment_by_name("bench-serving") is None:
        mlflow.create_experiment("bench-serving", artifact_location=str(home / "serving-artifacts"))
    mlflow.set_experiment("bench-serving")
    with mlflow.start_run():
        search_uri = log_search_model(SearchBundle(matcher, index), None).model_uri
        matcher_uri = log_matcher(matcher, None).model_uri
    captions = data.captions
    images = [base64.b64encode(p.read_bytes()).decode() for p in data.image_paths()[:50]]
    search = _hammer(
        search_uri,
        home,
        requests,
        clients,
        lambda i: {
            "dataframe_split": {"columns": ["text"], "data": [[captions[i % len(captions)]]]},
            "params": {"k": 10},
        },
        lambda answer: len(answer["predictions"][0]["items"]) == 10,
    )
    scored = _hammer(
        matcher_uri,
        home,
        matcher_requests,
        matcher_clients,
        lambda i: {
            "dataframe_split": {
                "columns": ["image", "text"],
                "data": [[images[i % len(images)], captions[i % len(captions)]]],
            }
        },
        lambda answer: -1.0 <= answer["predictions"][0]["score"] <= 1.0,
    )
    return [
        {
            "what": f"itm-search served: {requests} text queries from {clients} concurrent clients, requests/s",
            "reference": "0 errors",
            "value": search["rps"],
            "ref_value": None,
            "ratio": None,
            "target": "0 errors; p50/p99 reported",
            "note": f"{search['errors']} errors; p50 {search['p50']:.0f} ms, p99 {search['p99']:.0f} ms; {len(index)} "
            "images, `mlflow models serve --workers 2` on loopback",
        },
        {
            "what": f"matcher served: {matcher_requests} image+text pairs (base64 PNG) from {matcher_clients} "
            "concurrent clients, requests/s",
            "reference": "0 errors",
            "value": scored["rps"],
            "ref_value": None,
            "ratio": None,
            "target": "0 errors; p50/p99 reported",
            "note": f"{scored['errors']} errors; p50 {scored['p50']:.0f} ms, p99 {scored['p99']:.0f} ms; `mlflow "
            "models serve --workers 2` on loopback",
        },
    ]
