"""`itm up --host` other than loopback: refused without credentials; with them, the Prefect API and
MLflow answer 401 to a request without credentials and 200 with them."""

from __future__ import annotations

import base64
import socket
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
HOST = "127.0.0.2"  # another address of the loopback interface: "not 127.0.0.1", yet nothing leaves the machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _status(url: str, auth: tuple[str, str] | None = None, data: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_stack_on_another_address_requires_credentials(tmp_path, monkeypatch):
    from itm_core.ops.stack import StackError, down, up

    monkeypatch.delenv("ITM_AUTH_USER", raising=False)
    monkeypatch.delenv("ITM_AUTH_PASSWORD", raising=False)
    with pytest.raises(StackError, match="set ITM_AUTH_USER and ITM_AUTH_PASSWORD"):
        up(_free_port(), _free_port(), home=tmp_path, host=HOST, echo=lambda _: None)

    creds = ("itm-admin", "s3cret-Pass-2026")
    monkeypatch.setenv("ITM_AUTH_USER", creds[0])
    monkeypatch.setenv("ITM_AUTH_PASSWORD", creds[1])
    stack = up(_free_port(), _free_port(), home=tmp_path, host=HOST, echo=lambda _: None)
    try:
        assert stack.auth and stack.prefect_api.startswith(f"http://{HOST}:")
        checks = [
            (f"{stack.prefect_api}/flows/filter", b"{}"),
            (f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=5", None),
            (f"{stack.mlflow_uri}/", None),
        ]
        for url, data in checks:
            assert _status(url, data=data) == 401, url
            assert _status(url, ("itm-admin", "wrong"), data) == 401, url
            assert _status(url, creds, data) == 200, url
        # the password is in no state file and no log of the stack
        for path in (tmp_path / "stack").iterdir():
            assert creds[1] not in path.read_text(errors="replace"), path
    finally:
        down(tmp_path, echo=lambda _: None)
