"""The registered matcher as MLflow serves it: ``mlflow models serve -m models:/itm-matcher@champion``
answers a scoring request with the same scores and embeddings as the model loaded in process."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from itm_core import create
from itm_core.data import DataError, image_from_reference
from itm_core.models.matcher import Matcher
from itm_core.ops.tracking import example_image_base64, log_matcher

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture
def registered_matcher(mlflow_store, tiny_shapes):
    """A matcher over fitted classic encoders, logged and registered as itm-matcher@champion."""
    image_encoder, text_encoder = create("encoder", "color-histogram"), create("encoder", "tfidf", max_features=64)
    text_encoder.fit(tiny_shapes.captions)
    matcher = Matcher(
        {"name": "color-histogram", "options": {}},
        {"name": "tfidf", "options": {"max_features": 64}},
        int(image_encoder.dim),
        int(text_encoder.dim),
        embed_dim=8,
        hidden_dim=0,
    )
    matcher.attach_encoders(image_encoder, text_encoder)
    mlflow.set_experiment("serving")
    with mlflow.start_run():
        info = log_matcher(matcher, "itm-matcher")
    MlflowClient().set_registered_model_alias("itm-matcher", "champion", str(info.registered_model_version))
    return info


def test_logged_matcher_has_signature_and_input_example(registered_matcher):
    from mlflow.models import Model

    model = Model.load(registered_matcher.model_uri)
    assert [c["name"] for c in model.signature.inputs.to_dict()] == ["image", "text"]
    assert [c["name"] for c in model.signature.outputs.to_dict()] == ["score", "image_embedding", "text_embedding"]
    assert model.saved_input_example_info is not None
    example = pd.DataFrame({"image": [example_image_base64()], "text": ["a red circle in the middle"]})
    out = mlflow.pyfunc.load_model("models:/itm-matcher@champion").predict(example)
    assert len(out["image_embedding"][0]) == 8 and -1 <= out["score"][0] <= 1


def test_images_by_path_data_uri_or_base64(tmp_path):
    b64 = example_image_base64(16)
    assert image_from_reference(b64).size == (16, 16)
    assert image_from_reference(f"data:image/png;base64,{b64}").size == (16, 16)
    image_from_reference(b64).save(tmp_path / "x.png")
    assert image_from_reference(str(tmp_path / "x.png")).size == (16, 16)
    with pytest.raises(DataError, match="neither an image file"):
        image_from_reference("/no/such/file.png")
    with pytest.raises(DataError, match="base64 image"):
        image_from_reference("aGVsbG8gd29ybGQ=")  # valid base64, not an image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, tmp_path: Path):
    """`mlflow models serve -m MODEL --env-manager local` on a free loopback port; yields its port."""
    port = _free_port()
    # mlflow runs `uvicorn` from PATH: the virtual environment's, as when it is activated
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the server writes to it until it is stopped
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
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
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        yield port
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(30)
        log.close()


def post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_search_model_answers_and_rejects_bad_requests(registered_matcher, mlflow_store, tiny_shapes, tmp_path):
    """`mlflow models serve` of itm-search: text and base64 queries answered; every bad request a 4xx
    with its reason."""
    from itm_core.models.search_index import SearchIndex
    from itm_core.ops.search import SearchBundle, log_search_model
    from itm_core.ops.tracking import load_matcher

    matcher = load_matcher("models:/itm-matcher@champion")
    paths = [str(p) for p in tiny_shapes.image_paths()]
    index = SearchIndex.build(matcher.embed_images(paths).numpy(), pd.DataFrame({"image": paths}))
    with mlflow.start_run():
        log_search_model(SearchBundle(matcher, index), "itm-search")
    with served("models:/itm-search/1", mlflow_store, tmp_path) as port:
        status, answer = post(
            port, {"dataframe_split": {"columns": ["text"], "data": [["a red circle"]]}, "params": {"k": 3}}
        )
        assert status == 200 and len(answer["predictions"][0]["items"]) == 3
        status, answer = post(
            port, {"dataframe_split": {"columns": ["image"], "data": [[example_image_base64()]]}, "params": {"k": 2}}
        )
        assert status == 200 and len(answer["predictions"][0]["scores"]) == 2
        bad = [
            ({"columns": ["text"], "data": [[""]]}, {}, "exactly one of 'text'"),
            ({"columns": ["image"], "data": [["%%%"]]}, {}, "not base64-encoded image data"),
            ({"columns": ["image"], "data": [[paths[0]]]}, {}, "not base64-encoded image data"),
            ({"columns": ["text"], "data": [["a red circle"]]}, {"k": 0}, "k must be between 1 and 1000"),
        ]
        for frame, params, reason in bad:
            status, answer = post(port, {"dataframe_split": frame, "params": params})
            assert 400 <= status < 500 and reason in answer["message"] and "stack_trace" not in answer, (
                frame,
                params,
                answer,
            )


def test_mlflow_models_serve_answers_a_scoring_request(registered_matcher, mlflow_store, tiny_shapes, tmp_path):
    with served("models:/itm-matcher@champion", mlflow_store, tmp_path) as port:
        frame = pd.DataFrame(
            {
                "image": [
                    example_image_base64(),
                    "data:image/png;base64," + base64.b64encode(tiny_shapes.image_path(0).read_bytes()).decode(),
                ],
                "text": ["a red circle in the middle", tiny_shapes.captions_of(0)[0]],
            }
        )
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            answered = json.loads(resp.read())["predictions"]
        local = mlflow.pyfunc.load_model("models:/itm-matcher@champion").predict(frame)
        assert [row["score"] for row in answered] == pytest.approx(local["score"].tolist(), abs=1e-5)
        assert len(answered[0]["image_embedding"]) == 8 and len(answered[1]["text_embedding"]) == 8
        # a bad image is a 400 whose message carries the reason, with no stack trace
        bad = json.dumps(
            {"dataframe_split": {"columns": ["image", "text"], "data": [["bm90IGFuIGltYWdl", "a red circle"]]}}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=bad, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=60)
        assert answer.value.code == 400
        error = json.loads(answer.value.read())
        assert error["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in error
        assert "bad request: base64 image" in error["message"] and "unexpected error" not in error["message"]
        # a path on the server, too many rows, a missing column, an empty text: 400s naming the reason
        for frame, reason in (
            (pd.DataFrame({"image": [str(tiny_shapes.image_path(0))], "text": ["x"]}), "not base64-encoded image data"),
            (
                pd.DataFrame({"image": [example_image_base64()] * 300, "text": ["x"] * 300}),
                "a request holds 1 to 256 rows",
            ),
            (pd.DataFrame({"text": ["x"]}), "['image']"),
            (pd.DataFrame({"image": [example_image_base64()], "text": [""]}), "row 0: 'text' is empty"),
            (pd.DataFrame({"image": [example_image_base64()] * 2, "text": ["x", "  \t"]}), "row 1: 'text' is empty"),
        ):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                headers={"Content-Type": "application/json"},
                data=json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode(),
            )
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=60)
            assert answer.value.code == 400 and reason in json.loads(answer.value.read())["message"]
