"""``itm up`` / ``itm down``: a local stack of a Prefect server, an MLflow tracking server and a
process that serves the deployments of ``prefect.yaml``, bound to 127.0.0.1 unless ``host`` says
otherwise. Any other address needs credentials (``ITM_AUTH_USER``, ``ITM_AUTH_PASSWORD`` in the
environment): the Prefect server then requires its API auth string and MLflow runs its basic-auth
app, so neither answers a request without them. Credentials are never written to the stack's
state, its logs or MLflow.

State (process ids, ports, log files) lives in ``$ITM_HOME/stack`` (``./.itm/stack``). The servers
serve the home's store (:mod:`itm_core.ops.store`): the MLflow store ``$ITM_HOME/mlflow`` (a SQLite
database and an artifact folder) and Prefect's database in ``$ITM_HOME/prefect``, the very files
that commands open directly while the stack is down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from itm_core.errors import StackError
from itm_core.home import itm_home
from itm_core.ops.store import artifact_root, prefect_home, tracking_uri, use_home_store

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
LOOPBACK_DEFAULTS = ("127.0.0.1", "localhost", "::1")
AUTH_USER, AUTH_PASSWORD = "ITM_AUTH_USER", "ITM_AUTH_PASSWORD"


def credentials() -> tuple[str, str] | None:
    user, password = os.environ.get(AUTH_USER, ""), os.environ.get(AUTH_PASSWORD, "")
    return (user, password) if user and password else None


def _auth_header() -> dict[str, str]:
    import base64

    creds = credentials()
    return {"Authorization": "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()} if creds else {}


@dataclass
class Stack:
    home: str
    prefect_port: int
    mlflow_port: int
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    host: str = HOST
    auth: bool = False

    @property
    def address(self) -> str:
        """Where clients on this machine reach the stack (a wildcard bind is reached on loopback)."""
        return HOST if self.host in ("0.0.0.0", "::") else self.host

    @property
    def prefect_ui(self) -> str:
        return f"http://{self.address}:{self.prefect_port}"

    @property
    def prefect_api(self) -> str:
        return f"{self.prefect_ui}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.address}:{self.mlflow_port}"

    @property
    def state_file(self) -> Path:
        return Path(self.home) / "stack" / "stack.json"

    def env(self) -> dict[str, str]:
        """What a client of this stack needs: the Prefect API and the MLflow tracking server (with
        authentication, the credentials come from ``ITM_AUTH_USER`` / ``ITM_AUTH_PASSWORD``)."""
        return {
            "PREFECT_API_URL": self.prefect_api,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "ITM_MLFLOW_UI_URL": self.mlflow_uri,
        }

    def auth_env(self) -> dict[str, str]:
        """The clients' credential variables, from ``ITM_AUTH_*`` (empty without authentication)."""
        creds = credentials()
        if not self.auth or creds is None:
            return {}
        return {
            "PREFECT_API_AUTH_STRING": f"{creds[0]}:{creds[1]}",
            "MLFLOW_TRACKING_USERNAME": creds[0],
            "MLFLOW_TRACKING_PASSWORD": creds[1],
        }

    def describe(self) -> list[tuple[str, str, str]]:
        return [
            ("Prefect server + UI", self.prefect_ui, self.logs.get("prefect", "")),
            ("MLflow tracking server + UI", self.mlflow_uri, self.logs.get("mlflow", "")),
            (
                "deployments (serve)",
                "retrain/default, evaluate/default, generate/default, ... (see prefect.yaml)",
                self.logs.get("serve", ""),
            ),
        ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _http_ok(url: str, data: bytes | None = None) -> bool:
    try:
        headers = {"Content-Type": "application/json", **_auth_header()}
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=5) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


def load_stack(home: Path | None = None) -> Stack | None:
    path = (home or itm_home()) / "stack" / "stack.json"
    if not path.is_file():
        return None
    return Stack(**json.loads(path.read_text()))


def running(stack: Stack) -> dict[str, bool]:
    return {name: _alive(pid) for name, pid in stack.pids.items()}


def use_running_stack(home: Path | None = None) -> Stack | None:
    """When ``itm up`` runs here and the environment names no Prefect API or MLflow store, point this
    process at the stack, so that ``itm run`` and ``itm demo`` land in its UIs."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    stack = load_stack(home)
    if stack is None or not stack.pids or not all(running(stack).values()):
        return None
    os.environ.update(stack.env())
    for key, value in stack.auth_env().items():
        os.environ.setdefault(key, value)
    return stack


def connect(home: Path | None = None) -> str:
    """Point this process (a notebook, a script) at the workbench's store as the ``itm`` command
    uses it: the running stack's servers, else the home's files (:mod:`itm_core.ops.store`); what
    the environment sets wins. Returns the MLflow tracking URI; call it before using MLflow."""
    import mlflow

    if use_running_stack(home) is None:
        use_home_store(home)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    return uri


def _start(stack: Stack, name: str, argv: list[str], env: dict[str, str]) -> None:
    log = Path(stack.home) / "stack" / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
    stack.pids[name], stack.logs[name] = proc.pid, str(log)
    stack.state_file.write_text(json.dumps(asdict(stack), indent=2))


def _wait(stack: Stack, name: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not _alive(stack.pids[name]):
            raise StackError(f"{name} exited while starting; see {stack.logs[name]}")
        time.sleep(1)
    raise StackError(f"{name} did not become ready in {timeout:.0f} s; see {stack.logs[name]}")


def _deployments_ready(stack: Stack) -> bool:
    """Every deployment of ``prefect.yaml`` is registered on the server."""
    try:
        return len(served_deployments(stack)) >= len(deployment_specs())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def up(
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    home: Path | None = None,
    timeout: float = 240,
    echo: Callable[[str], None] = print,
    host: str = HOST,
) -> Stack:
    """Start the three processes (or report the running stack) and wait until each answers. A
    ``host`` other than loopback requires ``ITM_AUTH_USER`` and ``ITM_AUTH_PASSWORD``."""
    home = home or itm_home()
    auth = host not in LOOPBACK_DEFAULTS
    if auth and credentials() is None:
        raise StackError(
            f"binding to {host} lets other machines reach the stack: set {AUTH_USER} and {AUTH_PASSWORD} "
            "(the Prefect API and MLflow then require them), or keep the default host 127.0.0.1"
        )
    current = load_stack(home)
    if current is not None and current.pids and all(running(current).values()):
        echo("the stack is already running")
        return current
    if current is not None:
        down(home, echo=lambda _: None)
    (home / "stack").mkdir(parents=True, exist_ok=True)
    artifact_root(home).mkdir(parents=True, exist_ok=True)
    stack = Stack(str(home), prefect_port, mlflow_port, host=host, auth=auth)
    base = {k: v for k, v in os.environ.items() if k not in (AUTH_USER, AUTH_PASSWORD, "PREFECT_API_URL")}
    base.update(
        {
            "PREFECT_HOME": str(prefect_home(home)),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    prefect_env, mlflow_env = {**base, "PREFECT_UI_API_URL": stack.prefect_api}, dict(base)
    # on loopback, experiments keep their artifacts in the home's folder, which a run made while the
    # stack is down writes to directly (one store); other machines reach artifacts through the server
    mlflow_extra = [] if auth else ["--default-artifact-root", artifact_root(home).as_uri()]
    found = credentials()
    if auth and found is not None:
        user, password = found
        prefect_env["PREFECT_SERVER_API_AUTH_STRING"] = f"{user}:{password}"
        ini = home / "stack" / "mlflow-auth.ini"  # no password in it: MLflow reads that from the environment
        ini.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = "
            f"sqlite:///{home / 'mlflow' / 'basic_auth.db'}\n"
            f"admin_username = {user}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        import secrets

        mlflow_env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=password,  # CSRF key: the user's, else one per start
            MLFLOW_FLASK_SERVER_SECRET_KEY=os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32),
        )
        # Host headers MLflow accepts (its DNS-rebinding guard): ITM_ALLOWED_HOSTS, else the bound address and loopback
        allowed = (
            os.environ.get("ITM_ALLOWED_HOSTS") or f"{stack.address},{stack.address}:{mlflow_port},localhost,127.0.0.1"
        )
        mlflow_extra = ["--app-name", "basic-auth", "--allowed-hosts", allowed]
    try:
        _start(
            stack,
            "prefect",
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(prefect_port)],
            prefect_env,
        )
        _start(
            stack,
            "mlflow",
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                host,
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                tracking_uri(home),
                "--artifacts-destination",
                str(artifact_root(home)),
                *mlflow_extra,
            ],
            mlflow_env,
        )
        _wait(stack, "mlflow", lambda: _http_ok(f"{stack.mlflow_uri}/health"), timeout)
        echo(f"MLflow tracking server and UI: {stack.mlflow_uri}")
        _wait(stack, "prefect", lambda: _http_ok(f"{stack.prefect_api}/health"), timeout)
        echo(f"Prefect server and UI: {stack.prefect_ui}")
        _start(
            stack,
            "serve",
            [sys.executable, "-m", "itm_core.ops.serve"],
            {**base, **stack.env(), **stack.auth_env(), "ITM_HOME": str(home)},
        )
        _wait(stack, "serve", lambda: _deployments_ready(stack), timeout)
        echo("deployments served: " + ", ".join(served_deployments(stack)))
    except BaseException:
        down(home, echo=lambda _: None)
        raise
    return stack


def down(home: Path | None = None, timeout: float = 20, echo: Callable[[str], None] = print) -> list[str]:
    """Stop every process of the stack (SIGTERM to its process group, SIGKILL after ``timeout``)."""
    home = home or itm_home()
    stack = load_stack(home)
    if stack is None:
        echo("no stack is running here")
        return []
    stopped = []
    for name in ("serve", "prefect", "mlflow"):
        pid = stack.pids.get(name)
        if pid is None or not _alive(pid):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        stopped.append(name)
        echo(f"stopped {name} (pid {pid})")
    stack.state_file.unlink(missing_ok=True)
    return stopped


# --- the served deployments -------------------------------------------------------------------------


def deployment_specs(path: Path | None = None) -> list[dict[str, Any]]:
    """The deployments of ``prefect.yaml``."""
    import yaml

    path = path or PROJECT_ROOT / "prefect.yaml"
    return list(yaml.safe_load(path.read_text()).get("deployments", []))


def served_deployments(stack: Stack) -> list[str]:
    """``flow/deployment`` names as the stack's Prefect server lists them (no flow code is imported here)."""

    def post(path: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            f"{stack.prefect_api}/{path}", data=b"{}", headers={"Content-Type": "application/json", **_auth_header()}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    flows = {f["id"]: f["name"] for f in post("flows/filter")}
    return sorted(f"{flows.get(d['flow_id'], '?')}/{d['name']}" for d in post("deployments/filter"))


def build_deployments(path: Path | None = None) -> list[Any]:
    """A runner deployment per entry of ``prefect.yaml``, its form listing the registered plugins,
    with its triggers and schedules switched as ``itm automations`` left them."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import ParameterSchema

    from itm_core.ops.automations import declared, schedules_of, triggers_of
    from itm_core.ops.forms import with_plugin_choices

    specs = deployment_specs(path)
    declared(specs)  # names present and unique
    deployments = []
    for spec in specs:
        flow: Any = load_flow_from_entrypoint(str(PROJECT_ROOT / spec["entrypoint"]))
        deployment: Any = flow.to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags"),
            parameters=spec.get("parameters") or {},
            triggers=triggers_of(spec),
            schedules=schedules_of(spec),
        )
        schema = with_plugin_choices(deployment._parameter_openapi_schema.model_dump())
        deployment._parameter_openapi_schema = ParameterSchema(**schema)
        deployments.append(deployment)
    return deployments


def serve_deployments() -> None:
    from prefect import serve

    serve(*build_deployments(), print_starting_message=True)
