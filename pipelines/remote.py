"""Submit the pipeline to a Kubeflow Pipelines API server: one run now, or a recurring run.

``noisyad pipeline submit`` compiles the pipeline (:func:`pipelines.compile.compile_pipeline`)
and creates a run with ``kfp.Client.create_run_from_pipeline_package``.
``noisyad pipeline schedule --cron EXPR`` uploads the compiled package (a new version of the
pipeline ``noisyad-purified-training``, the pipeline itself when it does not exist yet) and
creates a recurring run with ``kfp.Client.create_recurring_run``.

The host comes from ``--host`` or ``KFP_HOST``. Before any kfp call the API server's health
endpoint is probed with a short timeout, so a missing or unreachable server is a one-line
error within seconds, not a traceback after urllib3's retries.

Kubeflow's cron has six fields, seconds first (``0 0 3 * * *`` is 03:00 every day).

Example:
    >>> submit("http://localhost:8080", {"data_uri": "s3://bucket/mvtec",
    ...        "category": "bottle"})                                      # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOST_ENV = "KFP_HOST"
PROBE_TIMEOUT = 5.0
HEALTH_PATH = "/apis/v2beta1/healthz"


class RemoteError(RuntimeError):
    """A user-facing problem with the Kubeflow Pipelines server or the request (one line)."""


def resolve_host(host: str | None) -> str:
    """``host``, else ``KFP_HOST``, with ``http://`` added when no scheme is given.

    Raises:
        RemoteError: Neither is set.
    """
    host = (host or os.environ.get(HOST_ENV) or "").strip()
    if not host:
        raise RemoteError(
            f"no Kubeflow Pipelines host: pass --host URL or set {HOST_ENV} "
            "(e.g. http://localhost:8080 after `kubectl port-forward -n kubeflow "
            "svc/ml-pipeline-ui 8080:80`)"
        )
    if "://" not in host:
        host = f"http://{host}"
    return host.rstrip("/")


def validate_cron(expression: str) -> str:
    """Check a Kubeflow cron expression: six fields, seconds first.

    Raises:
        RemoteError: Another number of fields; for five, says to prepend the seconds.
    """
    fields = expression.split()
    if len(fields) == 6:
        return " ".join(fields)
    if len(fields) == 5:
        raise RemoteError(
            f"cron expression {expression!r} has 5 fields; Kubeflow's cron has 6, seconds "
            f"first: prepend the seconds, e.g. '0 {' '.join(fields)}'"
        )
    raise RemoteError(
        f"cron expression {expression!r} has {len(fields)} fields; Kubeflow's cron needs 6 "
        "(second minute hour day-of-month month day-of-week), e.g. '0 0 3 * * *'"
    )


def check_reachable(host: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast when nothing answers HTTP at ``host`` (any HTTP answer counts as up).

    Raises:
        RemoteError: Within about ``timeout`` seconds, naming the host.
    """
    try:
        with urllib.request.urlopen(f"{host}{HEALTH_PATH}", timeout=timeout):
            return
    except urllib.error.HTTPError:  # it answered (maybe 401/403 behind auth): it is up
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
    raise RemoteError(
        f"Kubeflow Pipelines API server {host} is unreachable ({reason}); check --host or "
        f"{HOST_ENV} (port-forward the ml-pipeline-ui or ml-pipeline service first)"
    )


def make_client(host: str, namespace: str | None):
    """A ``kfp.Client`` on ``host`` after the reachability probe.

    Raises:
        RemoteError: The probe failed, or the client could not talk to the server.
    """
    import warnings

    import kfp

    check_reachable(host)
    # The constructor itself calls the healthz API (5 tries, 5 s apart, on an API error).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0b2"
            if namespace:
                return kfp.Client(host=host, namespace=namespace)
            return kfp.Client(host=host)
    except Exception as exc:
        raise _one_line(host, exc) from exc


def _one_line(host: str, exc: Exception) -> RemoteError:
    """A kfp or HTTP failure as one line (the API's reason, not its whole response)."""
    reason = getattr(exc, "reason", None) or str(exc)
    body = getattr(exc, "body", None)
    first = str(reason).strip().splitlines()[0] if str(reason).strip() else type(exc).__name__
    detail = f" {str(body).strip().splitlines()[0][:300]}" if body else ""
    return RemoteError(f"Kubeflow Pipelines at {host}: {type(exc).__name__}: {first}{detail}")


def compiled_package(folder: Path, image: str | None) -> Path:
    """Compile the pipeline into ``folder`` and return the YAML path."""
    from pipelines.compile import compile_pipeline

    path = folder / "pipeline.yaml"
    compile_pipeline(path, image)
    return path


def submit(
    host: str,
    arguments: dict[str, Any],
    *,
    experiment: str = "noisyad",
    namespace: str | None = None,
    run_name: str | None = None,
    image: str | None = None,
    enable_caching: bool | None = None,
    package: Path | None = None,
) -> dict[str, Any]:
    """Compile the pipeline and create one run on the Kubeflow Pipelines server.

    Args:
        host: API server URL (see :func:`resolve_host`).
        arguments: Pipeline parameters.
        experiment: Kubeflow experiment (created when missing).
        namespace: Kubernetes namespace (multi-user deployments); None: the client's default.
        run_name: Run name in the UI; default ``noisyad <category> <UTC time>``.
        image: Container image of the steps; None: the project's default.
        enable_caching: None keeps the compiled setting (caching on).
        package: An already compiled YAML to send instead of compiling.

    Returns:
        ``{"host", "run_id", "run_name", "experiment"}``.
    """
    client = make_client(host, namespace)
    name = run_name or default_name(arguments)
    with tempfile.TemporaryDirectory() as tmp:
        path = package or compiled_package(Path(tmp), image)
        try:
            result = client.create_run_from_pipeline_package(
                str(path),
                arguments=arguments,
                run_name=name,
                experiment_name=experiment,
                namespace=namespace,
                enable_caching=enable_caching,
            )
        except Exception as exc:
            raise _one_line(host, exc) from exc
    return {"host": host, "run_id": result.run_id, "run_name": name, "experiment": experiment}


def schedule(
    host: str,
    arguments: dict[str, Any],
    cron: str,
    *,
    experiment: str = "noisyad",
    namespace: str | None = None,
    job_name: str | None = None,
    image: str | None = None,
    enable_caching: bool = False,
    max_concurrency: int = 1,
    package: Path | None = None,
) -> dict[str, Any]:
    """Upload the compiled pipeline as a new version and create a recurring run.

    Args:
        host: API server URL.
        arguments: Pipeline parameters, the same every time the schedule fires.
        cron: Six-field cron expression (seconds first).
        experiment: Kubeflow experiment (created when missing).
        namespace: Kubernetes namespace (multi-user deployments).
        job_name: The recurring run's name; default ``noisyad <category> retraining``.
        image: Container image of the steps.
        enable_caching: Off by default: the parameters do not change between firings, so a
            cached ingest step would keep serving the first firing's data.
        max_concurrency: Runs of this schedule allowed at the same time.
        package: An already compiled YAML to upload instead of compiling.

    Returns:
        ``{"host", "recurring_run_id", "job_name", "cron", "experiment_id", "pipeline_id",
        "version_id"}``.
    """
    from pipelines.purification_pipeline import PIPELINE_NAME

    cron = validate_cron(cron)
    client = make_client(host, namespace)
    name = job_name or f"noisyad {label(arguments)} retraining"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        path = package or compiled_package(Path(tmp), image)
        try:
            exp = client.create_experiment(name=experiment, namespace=namespace)
            pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
            if pipeline_id is None:
                pipeline_id = client.upload_pipeline(
                    str(path), pipeline_name=PIPELINE_NAME, namespace=namespace
                ).pipeline_id
            version = client.upload_pipeline_version(
                str(path), pipeline_version_name=f"{PIPELINE_NAME}-{stamp}", pipeline_id=pipeline_id
            )
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=name,
                cron_expression=cron,
                max_concurrency=max_concurrency,
                params=arguments,
                pipeline_id=pipeline_id,
                version_id=version.pipeline_version_id,
                enable_caching=enable_caching,
            )
        except Exception as exc:
            raise _one_line(host, exc) from exc
    return {
        "host": host,
        "recurring_run_id": job.recurring_run_id,
        "job_name": name,
        "cron": cron,
        "experiment_id": exp.experiment_id,
        "pipeline_id": pipeline_id,
        "version_id": version.pipeline_version_id,
    }


def default_name(arguments: dict[str, Any]) -> str:
    """``noisyad <category> <UTC time>``: tells runs apart in the Kubeflow UI."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"noisyad {label(arguments)} {stamp}"


def label(arguments: dict[str, Any]) -> str:
    """The category, else (a source with one category) the last part of the data URI."""
    return arguments.get("category") or arguments.get("data_uri", "").rstrip("/").split("/")[-1]
