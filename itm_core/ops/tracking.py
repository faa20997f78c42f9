"""MLflow: runs tagged with their Prefect flow run, the matcher as a registered model, champion promotion.

The tracking store is whatever MLflow is configured with; the ``itm`` command configures the
workbench home's store unless ``MLFLOW_TRACKING_URI`` says otherwise (see :mod:`itm_core.ops.store`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import tempfile
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.flows import Flow
from pydantic import BaseModel

from itm_core.contract.params import check_components
from itm_core.errors import DataError, ModelError, UserError
from itm_core.models.matcher import Matcher
from itm_core.ops.interrupts import is_interrupt
from itm_core.ops.run_progress import showing_progress
from itm_core.ops.store import check_reachable_artifacts, experiment_location

CHAMPION = "champion"
DEFAULT_UI = "http://127.0.0.1:5000"

P = ParamSpec("P")
R = TypeVar("R")


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter dicts as MLflow's flat ``a.b.c`` keys (values truncated to MLflow's limit)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def prefect_context() -> dict[str, str]:
    """Tags that link an MLflow run to the Prefect flow run it belongs to (empty outside a flow)."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return {}
    tags = {
        "prefect.flow_run_id": str(flow_run.id),
        "prefect.flow_run_name": str(flow_run.name),
        "prefect.flow_name": str(flow_run.flow_name),
    }
    url = flow_run.ui_url  # only a real link: without a Prefect UI it reads "None/flow-runs/..."
    if url and str(url).startswith(("http://", "https://")):
        tags["prefect.flow_run_url"] = str(url)
    return tags


def run_url(run: Any) -> str:
    """The MLflow UI page of ``run``: on the tracking server when there is one, else where ``mlflow ui`` serves."""
    uri = mlflow.get_tracking_uri()
    base = uri if uri.startswith(("http://", "https://")) else os.environ.get("ITM_MLFLOW_UI_URL", DEFAULT_UI)
    return f"{base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def system_metrics_enabled() -> bool:
    """On unless ``ITM_SYSTEM_METRICS=0`` (or psutil is missing)."""
    import importlib.util

    return os.environ.get("ITM_SYSTEM_METRICS", "1") != "0" and importlib.util.find_spec("psutil") is not None


def _process_tags() -> dict[str, str]:
    """Which process holds a run open: host, pid and the process's start time (pids are reused)."""
    import socket

    import psutil

    me = psutil.Process()
    return {
        "itm.host": socket.gethostname(),
        "itm.pid": str(me.pid),
        "itm.pid_started": repr(me.create_time()),
    }  # repr: read back exactly


def close_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the runs of ``experiment_id`` left RUNNING by a process of this host that is gone
    (killed with -9, out of memory, a lost worker); returns their ids. Runs at the start of every flow."""
    import socket

    import psutil

    client = MlflowClient()
    host = socket.gethostname()
    try:
        running = client.search_runs(
            [experiment_id], f"attributes.status = 'RUNNING' and tags.`itm.host` = '{host}'", max_results=200
        )
    except MlflowException:
        return []
    closed = []
    for r in running:
        pid, started = int(r.data.tags.get("itm.pid", "0")), r.data.tags.get("itm.pid_started", "")
        try:
            alive = psutil.Process(pid).create_time() == float(started or 0) if pid else True
        except (psutil.NoSuchProcess, ValueError):
            alive = False
        if not alive:
            client.set_tag(r.info.run_id, "itm.crashed", f"process {pid} on {host} ended without closing this run")
            client.set_terminated(r.info.run_id, "FAILED")
            closed.append(r.info.run_id)
    return closed


def close_flow_run_runs(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect ``on_crashed`` / ``on_cancellation`` hook: the MLflow runs of this flow run that are
    still RUNNING become FAILED (crashed) or KILLED (cancelled)."""
    interrupted = "interrupt" in (state.message or "") or "termination signal" in (state.message or "").lower()
    status = "KILLED" if state.is_cancelled() or state.is_cancelling() or interrupted else "FAILED"
    client = MlflowClient()
    try:
        runs = mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.`prefect.flow_run_id` = '{flow_run.id}' and attributes.status = 'RUNNING'",
            output_format="list",
        )
    except MlflowException:
        return
    for r in runs:
        client.set_tag(r.info.run_id, "itm.crashed", f"Prefect flow run {flow_run.name} ended {state.type.value}")
        client.set_terminated(r.info.run_id, status)


def tracked_flow(name: str) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """Prefect's ``flow`` decorator as every workbench flow uses it: the components its parameters
    name are checked before anything runs (a run from the Prefect UI fails at once, in one line, with
    no MLflow run opened); what the flow prints goes to its run's log; its long steps show their
    progress (:mod:`itm_core.ops.run_progress`); and a crashed or cancelled run closes the MLflow runs
    it left open."""

    def decorate(fn: Callable[P, R]) -> Flow[P, R]:
        @functools.wraps(fn)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            for value in (*args, *kwargs.values()):
                if isinstance(value, BaseModel):
                    check_components(value)
            with showing_progress():
                return fn(*args, **kwargs)

        # the flow's parameter types, resolved where it was written: Prefect validates its runs against them
        checked.__annotations__ = typing.get_type_hints(fn)
        checked.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
        return flow(
            name=name, log_prints=True, on_crashed=[close_flow_run_runs], on_cancellation=[close_flow_run_runs]
        )(checked)

    return decorate


def ensure_experiment(name: str) -> Any:
    """The MLflow experiment ``name``, made active; created with its artifacts in the workbench home
    when the store is the home's (see :mod:`itm_core.ops.store`)."""
    uri = mlflow.get_tracking_uri()
    if mlflow.get_experiment_by_name(name) is None:
        with contextlib.suppress(MlflowException):  # another process created it meanwhile
            mlflow.create_experiment(name, artifact_location=experiment_location(name, uri))
    exp = mlflow.set_experiment(name)
    check_reachable_artifacts(name, exp.artifact_location, uri)
    return exp


@contextlib.contextmanager
def tracked_run(
    experiment: str, run_name: str | None, params: dict[str, Any], nested: bool = False, run_id: str | None = None
) -> Iterator[Any]:
    """An MLflow run with flattened params, tagged with the Prefect flow run and the process that
    holds it open; links back from Prefect. Runs left RUNNING by a dead process are closed first."""
    if not nested:
        exp = ensure_experiment(experiment)
        for orphan in close_orphaned_runs(exp.experiment_id):
            print(f"marked MLflow run {orphan} FAILED: the process that ran it is gone")
    # CPU, memory and disk use every few seconds (MLflow's system metrics), for top-level runs
    # ``run_id``: reopen that run (a resumed training goes on in the run it started in)
    with mlflow.start_run(
        run_id=run_id,
        run_name=None if run_id else run_name,
        nested=nested,
        log_system_metrics=not nested and system_metrics_enabled(),
    ) as run:
        mlflow.set_tags({**prefect_context(), **_process_tags()})
        if params and not run_id:  # a reopened run keeps the parameters it was started with
            mlflow.log_params(flatten(params))
        if not nested:
            _link_artifact(run)
        try:
            yield run
        except BaseException as exc:
            if is_interrupt(exc):  # Ctrl-C or SIGTERM: stopped, not failed
                mlflow.set_tag("itm.stopped", "interrupted (Ctrl-C or SIGTERM)")
                mlflow.end_run("KILLED")
            raise


def _link_artifact(run: Any) -> None:
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run

    if flow_run.id:
        create_link_artifact(
            link=run_url(run),
            link_text=f"MLflow run {run.info.run_name}",
            description=f"MLflow run `{run.info.run_id}` (tracking store: `{mlflow.get_tracking_uri()}`)",
        )


def log_table(frame: pd.DataFrame, artifact_file: str) -> None:
    """A pandas table as a CSV artifact of the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / artifact_file
        frame.to_csv(path, index=False)
        mlflow.log_artifact(str(path))


@contextlib.contextmanager
def bad_request_errors() -> Iterator[None]:
    """Inside ``predict``: a request MLflow cannot serve because of its content (a missing column, an
    undecodable or oversized image, an empty batch) becomes an ``MlflowException`` with
    ``INVALID_PARAMETER_VALUE``, which the scoring server answers with 400 and the reason, instead of
    its generic message and a stack trace."""
    try:
        yield
    except UserError as exc:
        raise MlflowException(f"bad request: {exc}", error_code=INVALID_PARAMETER_VALUE) from None


MAX_ROWS = 256  # rows of one request to a served model


def check_rows(frame: pd.DataFrame) -> None:
    """A request to a served model holds 1 to ``MAX_ROWS`` rows."""
    if not 1 <= len(frame) <= MAX_ROWS:
        raise DataError(f"a request holds 1 to {MAX_ROWS} rows, got {len(frame)}; split larger batches")


class MatcherModel(PythonModel):
    """The pyfunc face of a matcher: a DataFrame with ``image`` (a ``data:`` URI or bare base64 image
    bytes; never a path: a request does not make the server read its files) and ``text`` columns in;
    ``score`` (cosine in the joint space) and both joint-space embeddings out. In-process callers
    with image files use :func:`load_matcher` and ``Matcher.embed_images``."""

    def load_context(self, context: Any) -> None:
        self.matcher = Matcher.load(context.artifacts["matcher"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        with bad_request_errors():
            return self._predict(model_input)

    def _predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        from itm_core.data import image_from_reference

        missing = {"image", "text"} - set(model_input.columns)
        if missing:
            raise DataError(f"input needs columns 'image' and 'text'; missing {sorted(missing)}")
        check_rows(model_input)
        empty = [n for n, t in enumerate(model_input["text"]) if t is None or not str(t).strip()]
        if empty:
            raise DataError(f"row {empty[0]}: 'text' is empty; each row needs an image and a non-empty text to score")
        img = self.matcher.embed_image_objects(
            [image_from_reference(v, allow_paths=False) for v in model_input["image"]]
        )
        txt = self.matcher.embed_texts([str(t) for t in model_input["text"]])
        return pd.DataFrame(
            {
                "score": self.matcher.similarity.pairwise(img, txt).tolist(),
                "image_embedding": [row.tolist() for row in img],
                "text_embedding": [row.tolist() for row in txt],
            }
        )


def example_image_base64(size: int = 32) -> str:
    """A small PNG (a red disc on grey) as base64: the input example of logged models."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 30, 30))
    return _png_base64(image)


def log_matcher(matcher: Matcher, registered_model: str | None) -> Any:
    """Log ``matcher`` as the pyfunc model ``matcher`` of the active run, registering it when asked,
    with a signature and an input example that a served model can be called with as it is."""

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "text")]),
        outputs=Schema(
            [
                ColSpec("double", "score"),
                ColSpec(Array("double"), "image_embedding"),
                ColSpec(Array("double"), "text_embedding"),
            ]
        ),
    )
    example = pd.DataFrame({"image": [example_image_base64()], "text": ["a red circle in the middle"]})
    return _log_pyfunc("matcher", MatcherModel(), matcher, registered_model, signature, example)


# the models-from-code entry file of each kind of logged model (see itm_core/ops/served/__init__.py)
SERVED = Path(__file__).with_name("served")


def _log_pyfunc(
    name: str, python_model: Any, saveable: Any, registered_model: str | None, signature: Any, example: pd.DataFrame
) -> Any:
    """Save ``saveable`` to a folder and log it as the artifact ``name`` of the pyfunc class of
    ``python_model``, as models-from-code: MLflow stores the project's small entry file for the
    class (``itm_core/ops/served``), not a pickled object."""
    from importlib.metadata import version

    with tempfile.TemporaryDirectory() as tmp:
        folder = saveable.save(Path(tmp) / name)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(SERVED / f"{name}_model.py"),
            artifacts={name: str(folder)},
            pip_requirements=[f"itm-workbench=={version('itm-workbench')}", f"torch=={version('torch')}"],
            registered_model_name=registered_model,
            signature=signature,
            input_example=example,
        )


def _missing(exc: MlflowException) -> bool:
    """The model, version, alias or run does not exist (the user's URI), as opposed to a failing server."""
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def load_matcher(uri: str) -> Matcher:
    """A matcher from a saved folder, or from any MLflow model URI (``models:/name@alias``, ``runs:/id/matcher``)."""
    if Path(uri).is_dir():
        return Matcher.load(uri)
    return _load_pyfunc(uri, MatcherModel, "matcher").matcher


def _load_pyfunc(uri: str, model_class: type, what: str) -> Any:
    """The python model behind an MLflow model URI, checked to be a ``model_class``."""
    try:
        model = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        if not _missing(exc):
            raise
        raise ModelError(
            f"cannot load {what} {uri!r} from MLflow ({mlflow.get_tracking_uri()}): {exc.message}"
        ) from None
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, model_class):
        raise ModelError(f"{uri!r} is an MLflow model but not an itm {what}")
    return python_model


def load_trained_generator(folder: str | Path) -> Any:
    """A saved captioner or text-to-image model, by the configuration file in ``folder``."""
    from itm_core.models.captioning import CONFIG_FILE as CAPTIONER
    from itm_core.models.captioning import Captioner
    from itm_core.models.text_to_image import CONFIG_FILE as T2I
    from itm_core.models.text_to_image import TextToImage

    folder = Path(folder)
    if (folder / CAPTIONER).is_file():
        return Captioner.load(folder)
    if (folder / T2I).is_file():
        return TextToImage.load(folder)
    raise ModelError(f"{folder} is neither a saved captioner ({CAPTIONER}) nor a saved text-to-image model ({T2I})")


def _png_base64(image: Any) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class GeneratorModel(PythonModel):
    """The pyfunc face of a trained generator. A captioner takes an ``image`` column (base64 image
    data or ``data:`` URIs, never paths) and returns ``caption``; a text-to-image model takes
    ``prompt`` and returns ``image`` (base64 PNG)."""

    def load_context(self, context: Any) -> None:
        self.generator = load_trained_generator(context.artifacts["generator"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        with bad_request_errors():
            return self._predict(model_input, params or {})

    def _predict(self, model_input: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
        from itm_core.data import image_from_reference
        from itm_core.models.captioning import Captioner

        if isinstance(self.generator, Captioner):
            if "image" not in model_input.columns:
                raise DataError("a captioner's input needs an 'image' column (base64 image data or data: URIs)")
            check_rows(model_input)
            images = [image_from_reference(v, allow_paths=False) for v in model_input["image"]]
            return pd.DataFrame(
                {"caption": self.generator.caption_images(images, num_beams=int(params.get("num_beams", 1)))}
            )
        if "prompt" not in model_input.columns:
            raise DataError("a text-to-image model's input needs a 'prompt' column")
        check_rows(model_input)
        images = self.generator.generate(list(model_input["prompt"]), seed=int(params.get("seed", 0)))
        return pd.DataFrame({"image": [_png_base64(img) for img in images]})


def log_generator(generator: Any, registered_model: str | None) -> Any:
    """Log a trained captioner or text-to-image model as the pyfunc model ``generator``, registering it when asked."""

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from itm_core.models.captioning import Captioner

    if isinstance(generator, Captioner):
        schema = (
            Schema([ColSpec("string", "image")]),
            Schema([ColSpec("string", "caption")]),
            ParamSpec("num_beams", "long", 1),
        )
        example = pd.DataFrame({"image": [example_image_base64()]})
    else:
        schema = (
            Schema([ColSpec("string", "prompt")]),
            Schema([ColSpec("string", "image")]),
            ParamSpec("seed", "long", 0),
        )
        example = pd.DataFrame({"prompt": ["a red circle in the middle"]})
    signature = ModelSignature(inputs=schema[0], outputs=schema[1], params=ParamSchema([schema[2]]))
    return _log_pyfunc("generator", GeneratorModel(), generator, registered_model, signature, example)


def load_generator_model(uri: str) -> Any:
    """A trained captioner or text-to-image model from a saved folder or an MLflow model URI."""
    if Path(uri).is_dir():
        return load_trained_generator(uri)
    return _load_pyfunc(uri, GeneratorModel, "generator model").generator
