"""MLflow tracking for the pipeline: one parent run per pipeline run, a nested run per sub-model.

Every pipeline step logs into the parent run through :func:`step`, a context manager that
marks the run FAILED, with the error and its traceback, when the step raises. The last step
registers the ONNX model (:func:`register_onnx`) with the alias gate: the new version gets
``candidate`` and becomes ``champion`` only when its evaluation metric is at least the
current champion's.

Where runs go: the ``tracking_uri`` argument, else ``MLFLOW_TRACKING_URI``, else a sqlite
store ``mlflow.db`` in the working directory (``mlflow ui`` run there shows it). An HTTP
server is probed first with a short timeout, so an unreachable server fails in seconds.

Example:
    >>> run_id = start_run("", "noisyad", "brick K=3")                      # doctest: +SKIP
    >>> with step("", run_id, "train_final") as log:                         # doctest: +SKIP
    ...     log.log_metrics({"threshold": 2.5})
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
GATE_METRIC = "image_auroc"
CANDIDATE = "candidate"
CHAMPION = "champion"
PROBE_TIMEOUT = 5.0
RUN_KEY_TAG = "noisyad.run_key"
CHILD_TAG = "noisyad.child"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's client retries an HTTP request 7 times with exponential backoff (minutes in all);
# a pipeline step should fail within about a minute when the server goes away mid-run.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


class TrackingError(RuntimeError):
    """The tracking server cannot be used (unreachable, refuses the request)."""


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``MLFLOW_TRACKING_URI``, else ./mlflow.db."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast when an HTTP tracking server does not answer its health endpoint.

    Raises:
        TrackingError: Within about ``timeout`` seconds, naming the URI and what to do.
    """
    if not uri.startswith(("http://", "https://")):
        return
    start = time.monotonic()
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as exc:  # it answered: the server is up
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise TrackingError(
        f"MLflow tracking server {uri} is unreachable ({reason}; gave up after "
        f"{time.monotonic() - start:.1f} s). Start the server, or pass another tracking URI "
        "(--tracking-uri or MLFLOW_TRACKING_URI); with neither set, runs go to ./mlflow.db."
    )


def client(uri: str | None = None):
    """An ``MlflowClient`` on the resolved URI, after the reachability probe."""
    import mlflow
    from mlflow import MlflowClient

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = resolve_uri(uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlruns/`` beside a sqlite store.

    MLflow's own default is ``./mlruns`` in whatever folder the creating process runs in;
    next to the database, the store stays in one place (and ``mlflow ui`` there shows all).
    None for a server, which decides itself.
    """
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created when missing."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(found.experiment_id)
        return found.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_location(uri))


def start_run(uri: str | None, experiment: str, run_name: str, tags: dict | None = None) -> str:
    """Create a parent run (status RUNNING) and return its id."""
    mlflow_client = client(uri)
    run = mlflow_client.create_run(
        experiment_id(mlflow_client, experiment, resolve_uri(uri)),
        run_name=run_name,
        tags=tags or {},
    )
    logger.info("MLflow run %s (%s) in experiment %r", run.info.run_id, run_name, experiment)
    return run.info.run_id


def find_run(uri: str | None, experiment: str, run_key: str):
    """The newest parent run tagged with ``run_key`` (same settings and data), or None."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow_client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def set_status(uri: str | None, run_id: str, status: str) -> None:
    """Set a run's status: RUNNING to resume it, FINISHED / FAILED / KILLED to end it."""
    mlflow_client = client(uri)
    if status == "RUNNING":
        mlflow_client.update_run(run_id, status="RUNNING")
    else:
        mlflow_client.set_terminated(run_id, status)


def run_status(uri: str | None, run_id: str) -> str:
    """The run's status (RUNNING, FINISHED, FAILED, KILLED)."""
    return client(uri).get_run(run_id).info.status


@dataclass
class Step:
    """Logging handle of one pipeline step, bound to a run (the parent or a nested one)."""

    client: Any
    run_id: str
    parent_run_id: str
    name: str

    def log_params(self, params: dict) -> None:
        """Log parameters; an existing parameter with the same value is left alone."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        changed = {k: (existing[k], str(v)) for k, v in params.items() if k in existing}
        changed = {k: pair for k, pair in changed.items() if pair[0] != pair[1]}
        if changed:
            raise TrackingError(f"run {self.run_id} already has other values for {changed}")
        if new:
            self.client.log_batch(self.run_id, params=new)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Log numeric metrics (None and non-finite values are left out)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, 0)
            for k, v in metrics.items()
            if v is not None and np.isfinite(float(v))
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict) -> None:
        """Set tags on the run."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_figure(self, figure, path: str) -> None:
        """Log a matplotlib figure as an image artifact."""
        self.client.log_figure(self.run_id, figure, path)

    def log_text(self, text: str, path: str) -> None:
        """Log text as an artifact file."""
        self.client.log_text(self.run_id, text, path)

    def log_dict(self, data: dict, path: str) -> None:
        """Log a dict as a JSON artifact file."""
        self.client.log_dict(self.run_id, data, path)

    def log_artifact(
        self, path: str | Path, artifact_dir: str | None = None, name: str | None = None
    ) -> None:
        """Log a local file (under ``name`` when given) or every file of a folder."""
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_dir)
        elif name is None or name == Path(path).name:
            self.client.log_artifact(self.run_id, str(path), artifact_dir)
        else:  # kfp artifact files have no extension: log a copy with a telling name
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / name
                shutil.copyfile(path, copy)
                self.client.log_artifact(self.run_id, str(copy), artifact_dir)


def child_run(mlflow_client, parent_run_id: str, name: str) -> str:
    """The nested run ``name`` under the parent: reused when it exists (a rerun), else new."""
    parent = mlflow_client.get_run(parent_run_id)
    runs = mlflow_client.search_runs(
        [parent.info.experiment_id],
        filter_string=(
            f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{CHILD_TAG}` = '{name}'"
        ),
        max_results=1,
    )
    if runs:
        mlflow_client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    tags = {PARENT_TAG: parent_run_id, CHILD_TAG: name}
    return mlflow_client.create_run(parent.info.experiment_id, run_name=name, tags=tags).info.run_id


def mark_failed(mlflow_client, run_id: str, step_name: str, exc: BaseException) -> None:
    """End ``run_id`` as FAILED, recording the failing step, the error and its traceback."""
    message = f"{type(exc).__name__}: {exc}"
    try:
        mlflow_client.set_tag(run_id, "noisyad.failed_step", step_name)
        mlflow_client.set_tag(run_id, "noisyad.error", message[:4000])
        mlflow_client.set_tag(
            run_id, "mlflow.note.content", f"**Failed in step `{step_name}`**\n\n{message}"
        )
        text = "".join(traceback.format_exception(exc))
        mlflow_client.log_text(run_id, text, f"errors/{step_name.replace('/', '_')}.txt")
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        mlflow_client.set_terminated(run_id, status)
    except Exception as log_exc:  # the step's own error matters more than this one
        logger.warning("could not mark MLflow run %s as failed: %s", run_id, log_exc)


@contextmanager
def step(
    uri: str | None, run_id: str, name: str, child: str | None = None, finish: bool = False
) -> Iterator[Step]:
    """Log one pipeline step into the parent run (or into its nested run ``child``).

    On success the step's wall time is logged as ``time_<name>_s`` and a nested run is ended
    FINISHED (the parent too with ``finish=True``, for the last step). On an exception the
    nested run and the parent are marked FAILED with the error, and the exception propagates.
    """
    mlflow_client = client(uri)
    target = child_run(mlflow_client, run_id, child) if child else run_id
    start = time.perf_counter()
    handle = Step(mlflow_client, target, run_id, name)
    try:
        yield handle
    except BaseException as exc:
        logger.error("step %s failed: %s", name, exc)
        if child:
            mark_failed(mlflow_client, target, name, exc)
        mark_failed(mlflow_client, run_id, f"{name}/{child}" if child else name, exc)
        raise
    handle.log_metrics({f"time_{name}_s": time.perf_counter() - start})
    if child:
        mlflow_client.set_terminated(target, "FINISHED")
    if finish:
        mlflow_client.set_terminated(run_id, "FINISHED")


# Model registry -------------------------------------------------------------------------------


def should_promote(new_value: float | None, champion_value: float | None) -> bool:
    """The champion gate: promote when there is no champion metric or the new one is >= it."""
    if champion_value is None:
        return True
    return new_value is not None and new_value >= champion_value


def _version_metric(mlflow_client, version, metric: str) -> float | None:
    """A registered version's gate metric: its tag, else its run's metric."""
    if metric in version.tags:
        return float(version.tags[metric])
    if version.run_id:
        value = mlflow_client.get_run(version.run_id).data.metrics.get(metric)
        return None if value is None else float(value)
    return None


def promote(mlflow_client, name: str, version: str, metric: str = GATE_METRIC) -> bool:
    """Set ``candidate`` on ``version``; set ``champion`` too when it passes the gate."""
    from mlflow.exceptions import MlflowException

    mlflow_client.set_registered_model_alias(name, CANDIDATE, version)
    new = _version_metric(mlflow_client, mlflow_client.get_model_version(name, version), metric)
    try:
        champion = mlflow_client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == str(version):
        return True
    current = None if champion is None else _version_metric(mlflow_client, champion, metric)
    if should_promote(new, current):
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
        logger.info(
            "%s version %s is champion (%s %s, champion had %s)",
            name,
            version,
            metric,
            new,
            current,
        )
        return True
    logger.info(
        "%s version %s stays candidate: %s %s < champion version %s's %s",
        name,
        version,
        metric,
        new,
        champion.version,
        current,
    )
    return False


def register_onnx(
    uri: str | None,
    run_id: str,
    onnx_path: str | Path,
    name: str,
    input_example: np.ndarray,
    metrics: dict[str, float],
    metric: str = GATE_METRIC,
    tags: dict[str, str] | None = None,
) -> dict:
    """Log the ONNX model in MLflow's ONNX flavour under ``name`` and apply the alias gate.

    Idempotent per run: when ``name`` already has a version from ``run_id`` (a rerun of the
    step), that version is reused and no second version is created.

    Args:
        uri: Tracking (and registry) URI.
        run_id: The pipeline's parent run.
        onnx_path: The exported model.
        name: Registered model name.
        input_example: uint8 ``(1, S, S, 3)`` image, stored with the model; the signature is
            inferred from it and the model's outputs on it.
        metrics: Evaluation metrics; ``metrics[metric]`` is tagged on the version for the gate.
        metric: The gate metric (higher is better).
        tags: More tags for the version (category, backbone, ...).

    Returns:
        ``name``, ``version``, ``aliases``, ``model_uri``, ``run_id`` and ``created``.
    """
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import Model, infer_signature

    from noisyad.export import onnx_session, run_onnx

    mlflow_client = client(uri)
    existing = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    created = not existing
    if existing:
        version = existing[0]
        logger.info(
            "%s version %s holds run %s already: not registered again",
            name,
            version.version,
            run_id,
        )
    else:
        outputs = run_onnx(onnx_session(onnx_path, ["CPUExecutionProvider"]), input_example)
        signature = infer_signature(input_example, outputs)
        # The logged model belongs to an experiment: the run's, not the fluent default.
        mlflow.set_experiment(experiment_id=mlflow_client.get_run(run_id).info.experiment_id)
        info = Model.log(
            artifact_path=None,
            name="onnx_model",
            flavor=mlflow.onnx,
            registered_model_name=name,
            run_id=run_id,
            onnx_model=onnx.load(str(onnx_path)),
            signature=signature,
            input_example=input_example,
        )
        version = mlflow_client.get_model_version(name, str(info.registered_model_version))
    value = metrics.get(metric)
    if value is not None:
        mlflow_client.set_model_version_tag(name, version.version, metric, str(value))
    for key, tag in (tags or {}).items():
        mlflow_client.set_model_version_tag(name, version.version, key, str(tag))
    promote(mlflow_client, name, str(version.version), metric)
    aliases = sorted(mlflow_client.get_model_version(name, str(version.version)).aliases)
    return {
        "name": name,
        "version": str(version.version),
        "aliases": aliases,
        "model_uri": f"models:/{name}/{version.version}",
        "run_id": run_id,
        "created": created,
    }
