"""Concurrent retrains against one MLflow tracking server: the champion ends on the best version and
nothing is lost; the shared embedding cache survives concurrent writers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracking_server(tmp_path):
    """A real MLflow tracking server on loopback (SQLite store, local artifact root)."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "wb")  # noqa: SIM115 - the server writes to it until the fixture ends
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "mlflow-server.log"
                ).read_text()[-3000:]
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        log.close()


def test_concurrent_retrains_leave_the_best_version_champion(
    prefect_server, tracking_server, tmp_path, tiny_shapes_options
):
    """Four retrains of known different quality start together, then two more while a champion
    exists; after each round the champion is the version with the best test rsum, and every version
    has its run, metric and model."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL

    mlflow.set_tracking_uri(tracking_server)

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_server,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "ITM_HOME": str(tmp_path / "itm"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    # from barely trained linear heads to trained MLP heads: their test rsums differ
    variants = [
        {"epochs": 1, "hidden_dim": 0, "embed_dim": 4},
        {"epochs": 2, "hidden_dim": 0, "embed_dim": 16},
        {"epochs": 6, "hidden_dim": 64},
        {"epochs": 12, "hidden_dim": 256},
    ]
    client = MlflowClient(tracking_server)
    expected_versions = 0
    for round_, chosen in enumerate((variants, variants[2:])):
        procs = []
        for n, training in enumerate(chosen):
            params = tmp_path / f"r{round_}-{n}.json"
            params.write_text(
                json.dumps(
                    {
                        "dataset": {"options": tiny_shapes_options},
                        "image_encoder": {"name": "color-histogram"},
                        "text_encoder": {"name": "tfidf", "options": {"max_features": 256}},
                        "training": {**training, "batch_size": 16, "seed": round_ * 10 + n},
                        "promotion": {"policy": "better"},  # the highest wins, whoever finishes first
                    }
                )
            )
            procs.append(
                subprocess.Popen(
                    [str(BIN / "itm"), "run", "retrain", "--params", str(params)],
                    env=env,
                    cwd=tmp_path,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    stdin=subprocess.DEVNULL,
                )
            )
        outputs = [p.communicate(timeout=900) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0 and "{" in out, (out[-2000:], err[-3000:])
        expected_versions += len(chosen)
        versions = client.search_model_versions("name='itm-matcher'")
        assert len(versions) == expected_versions  # no version lost
        rsum = {}
        for v in versions:
            run = client.get_run(v.run_id)
            assert run.info.status == "FINISHED" and "test_rsum" in run.data.metrics
            assert "MLmodel" in {
                a.path for a in mlflow.artifacts.list_artifacts(artifact_uri=f"models:/itm-matcher/{v.version}")
            }
            rsum[str(v.version)] = run.data.metrics["test_rsum"]
        champion = client.get_model_version_by_alias("itm-matcher", "champion")
        assert rsum[str(champion.version)] == max(rsum.values()), (champion.version, rsum)
        decisions = [json.JSONDecoder().raw_decode(out[out.index("{") :])[0]["decision"] for out, _ in outputs]
        assert sum(d.startswith("promoted") for d in decisions) >= (1 if round_ == 0 else 0)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_embedding_cache_concurrent_writers(tmp_path):
    """Two processes encode the same 400 texts into one cache at once: every row is there once, and
    equal to a single writer's."""
    script = (
        "import sys, torch\n"
        "from itm_core import create\n"
        "from itm_core.encode.cache import EmbeddingCache\n"
        "from itm_core.encode.embed import encode, EncodeOptions\n"
        "texts = [f'caption number {i} of a red circle' for i in range(400)]\n"
        "enc = create('encoder', 'tfidf', max_features=64); enc.fit(texts)\n"
        "options = EncodeOptions(shard_size=16, text_batch_size=8)\n"
        "out = encode(enc, texts, EmbeddingCache(sys.argv[1]), options=options)\n"
        "torch.save(out, sys.argv[2])\n"
    )
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(cache), str(tmp_path / f"out{n}.pt")], stderr=subprocess.PIPE, text=True
        )
        for n in range(2)
    ]
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read()
    import torch

    from itm_core import create
    from itm_core.encode.cache import EmbeddingCache
    from itm_core.encode.embed import encode, encoder_key

    texts = [f"caption number {i} of a red circle" for i in range(400)]
    enc = create("encoder", "tfidf", max_features=64)
    enc.fit(texts)
    reference = encode(enc, texts, None)
    for n in range(2):
        assert torch.allclose(torch.load(tmp_path / f"out{n}.pt"), reference, atol=1e-6)
    again = encode(enc, texts, EmbeddingCache(cache))  # read back from the shared cache
    assert torch.allclose(again, reference, atol=1e-6)
    assert EmbeddingCache(cache).count(encoder_key(enc)) == len(texts)  # each key listed once, none lost


OPEN_INDEXES = """
import sys, time
from pathlib import Path
from itm_core.encode.cache import SCHEMA, _connect
root, start = Path(sys.argv[1]), float(sys.argv[2])
while time.time() < start:  # every process opens the same new indexes at the same moment
    pass
for n in range(150):
    _connect(root / str(n) / "index.sqlite", SCHEMA).close()
"""


def test_processes_creating_the_same_cache_index_at_once_all_get_it(tmp_path):
    """Switching a new SQLite index to WAL can fail at once with "database is locked" while another
    process is creating it; every opener waits its turn instead (this failed about once in a hundred
    opens with six processes before)."""
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_INDEXES, str(tmp_path), str(start)], stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read()[-2000:]
