"""``noisyad pipeline submit`` and ``schedule`` (pipelines/remote.py).

No Kubeflow Pipelines API server can run here, so ``kfp.Client`` is replaced by a fake that
records every call and checks the package it is given while it still exists. What these tests
cannot show: that a real server accepts the package and the arguments, and runs them.
The unreachable-host test uses the real ``kfp`` path up to the reachability probe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import kfp
import pytest
import yaml
from typer.testing import CliRunner

from noisyad.cli import app
from pipelines import remote
from pipelines.purification_pipeline import PIPELINE_NAME

runner = CliRunner()
HOST = "http://kfp.example:8080"


class FakeClient:
    """Records kfp.Client calls; reads the package file while it exists."""

    instances: list[FakeClient] = []

    def __init__(self, host=None, namespace="kubeflow", **kwargs) -> None:
        self.host, self.namespace, self.calls = host, namespace, []
        self.existing_pipeline_id: str | None = None
        FakeClient.instances.append(self)

    def _record(self, name: str, package: str | None, **kwargs) -> None:
        entry = {"name": name, **kwargs}
        if package is not None:
            path = Path(package)
            entry["package"] = path
            entry["package_exists"] = path.is_file()
            entry["spec"] = yaml.safe_load(path.read_text()) if path.is_file() else None
        self.calls.append(entry)

    def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
        self._record("create_run_from_pipeline_package", pipeline_file, **kwargs)
        return SimpleNamespace(run_id="run-123")

    def create_experiment(self, name, description=None, namespace=None):
        self._record("create_experiment", None, experiment=name, namespace=namespace)
        return SimpleNamespace(experiment_id="exp-1")

    def get_pipeline_id(self, name):
        self._record("get_pipeline_id", None, pipeline=name)
        return self.existing_pipeline_id

    def upload_pipeline(self, pipeline_package_path, pipeline_name=None, **kwargs):
        self._record("upload_pipeline", pipeline_package_path, pipeline=pipeline_name, **kwargs)
        return SimpleNamespace(pipeline_id="pipe-1")

    def upload_pipeline_version(self, pipeline_package_path, pipeline_version_name, **kwargs):
        self._record(
            "upload_pipeline_version", pipeline_package_path, version=pipeline_version_name,
            **kwargs,
        )  # fmt: skip
        return SimpleNamespace(pipeline_id=kwargs.get("pipeline_id"), pipeline_version_id="ver-1")

    def create_recurring_run(self, **kwargs):
        self._record("create_recurring_run", kwargs.pop("pipeline_package_path", None), **kwargs)
        return SimpleNamespace(recurring_run_id="rec-1")


@pytest.fixture
def fake_kfp(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    """kfp.Client replaced by FakeClient; the reachability probe recorded, not sent."""
    FakeClient.instances = []
    probes: list[str] = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.setattr(remote, "check_reachable", lambda host, timeout=5.0: probes.append(host))
    monkeypatch.delenv(remote.HOST_ENV, raising=False)
    FakeClient.probes = probes
    return FakeClient


def assert_is_the_compiled_pipeline(call: dict) -> None:
    assert call["package_exists"], "the package must exist while kfp reads it"
    spec = call["spec"]
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    tasks = [
        task
        for component in [spec["root"], *spec["components"].values()]
        for task in component.get("dag", {}).get("tasks", {}).values()
    ]
    assert any("parameterIterator" in task for task in tasks), "the ParallelFor fan-out"


def test_submit_compiles_and_creates_a_run_with_the_parameters(fake_kfp) -> None:
    result = runner.invoke(
        app,
        [
            "pipeline", "submit", "--host", HOST, "--namespace", "team-a",
            "--experiment", "retraining", "--data", "s3://bucket/mvtec", "--category", "bottle",
            "--subsets", "5", "--keep-fraction", "0.8",
            "--tracking-uri", "http://mlflow.mlops:5000", "--run-name", "bottle now",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert fake_kfp.probes == [HOST]
    (client,) = fake_kfp.instances
    assert (client.host, client.namespace) == (HOST, "team-a")
    (call,) = client.calls
    assert call["name"] == "create_run_from_pipeline_package"
    assert_is_the_compiled_pipeline(call)
    assert not call["package"].exists(), "the temporary package is cleaned up afterwards"
    assert call["experiment_name"] == "retraining"
    assert call["namespace"] == "team-a"
    assert call["run_name"] == "bottle now"
    assert call["enable_caching"] is None
    arguments = call["arguments"]
    assert arguments["data_uri"] == "s3://bucket/mvtec"
    assert arguments["category"] == "bottle"
    assert arguments["subsets"] == 5
    assert arguments["keep_fraction"] == "0.8"
    assert arguments["tracking_uri"] == "http://mlflow.mlops:5000"
    assert arguments["registered_model_name"] == "noisyad-{category}"
    spec_parameters = set(call["spec"]["root"]["inputDefinitions"]["parameters"])
    assert set(arguments) <= spec_parameters, "only parameters the pipeline declares"
    printed = json.loads(result.stdout)
    assert printed["run_id"] == "run-123" and printed["host"] == HOST


def test_submit_takes_the_host_from_kfp_host(fake_kfp, monkeypatch) -> None:
    monkeypatch.setenv(remote.HOST_ENV, "localhost:8080")
    result = runner.invoke(app, ["pipeline", "submit", "--data", "/data/x", "--no-cache"])
    assert result.exit_code == 0, result.output
    (client,) = fake_kfp.instances
    assert client.host == "http://localhost:8080"
    assert client.namespace == "kubeflow"  # kfp's default when --namespace is not given
    assert client.calls[0]["enable_caching"] is False


def test_schedule_uploads_a_version_and_creates_a_recurring_run(fake_kfp) -> None:
    result = runner.invoke(
        app,
        [
            "pipeline", "schedule", "--host", HOST, "--cron", "0 30 2 * * 1",
            "--experiment", "nightly", "--data", "s3://bucket/mvtec", "--category", "bottle",
            "--subsets", "3", "--tracking-uri", "http://mlflow.mlops:5000",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (client,) = fake_kfp.instances
    names = [c["name"] for c in client.calls]
    assert names == [
        "create_experiment", "get_pipeline_id", "upload_pipeline", "upload_pipeline_version",
        "create_recurring_run",
    ]  # fmt: skip
    calls = {c["name"]: c for c in client.calls}
    assert calls["create_experiment"]["experiment"] == "nightly"
    assert calls["upload_pipeline"]["pipeline"] == PIPELINE_NAME
    assert_is_the_compiled_pipeline(calls["upload_pipeline"])
    version = calls["upload_pipeline_version"]
    assert_is_the_compiled_pipeline(version)
    assert version["pipeline_id"] == "pipe-1"
    assert version["version"].startswith(PIPELINE_NAME + "-")
    job = calls["create_recurring_run"]
    assert job["experiment_id"] == "exp-1"
    assert job["cron_expression"] == "0 30 2 * * 1"
    assert job["pipeline_id"] == "pipe-1" and job["version_id"] == "ver-1"
    assert job["job_name"] == "noisyad bottle retraining"
    assert job["enable_caching"] is False  # a cached ingest would reuse the first data
    assert job["params"]["data_uri"] == "s3://bucket/mvtec"
    assert job["params"]["subsets"] == 3
    assert job["params"]["tracking_uri"] == "http://mlflow.mlops:5000"
    assert json.loads(result.stdout)["recurring_run_id"] == "rec-1"


def test_schedule_adds_a_version_to_an_existing_pipeline(fake_kfp, monkeypatch) -> None:
    original = FakeClient.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.existing_pipeline_id = "pipe-old"

    monkeypatch.setattr(FakeClient, "__init__", init)
    result = remote.schedule(HOST, {"data_uri": "/d"}, "0 0 3 * * *", job_name="daily")
    (client,) = fake_kfp.instances
    assert "upload_pipeline" not in [c["name"] for c in client.calls]
    assert result["pipeline_id"] == "pipe-old"
    assert client.calls[-1]["pipeline_id"] == "pipe-old"
    assert client.calls[-1]["job_name"] == "daily"


def test_five_field_cron_says_to_prepend_seconds(fake_kfp) -> None:
    result = runner.invoke(
        app, ["pipeline", "schedule", "--host", HOST, "--cron", "0 3 * * *", "--data", "/d"]
    )
    assert result.exit_code == 2
    assert "5 fields" in result.stderr and "prepend the seconds" in result.stderr
    assert "'0 0 3 * * *'" in result.stderr
    assert "Traceback" not in result.output
    assert fake_kfp.instances == []  # no client for a bad cron


@pytest.mark.parametrize("cron", ["", "* * *", "0 0 0 3 * * * *"])
def test_other_field_counts_are_rejected(cron: str) -> None:
    with pytest.raises(remote.RemoteError, match="needs 6"):
        remote.validate_cron(cron)


def test_six_fields_pass_normalized() -> None:
    assert remote.validate_cron(" 0  0 3 * * ? ") == "0 0 3 * * ?"


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_missing_host_is_one_line(fake_kfp, command: str) -> None:
    args = ["pipeline", command, "--data", "/d"]
    if command == "schedule":
        args += ["--cron", "0 0 3 * * *"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--host" in lines[0] and "KFP_HOST" in lines[0]
    assert fake_kfp.instances == []


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_unreachable_host_fails_fast_with_one_line(monkeypatch, command: str) -> None:
    """The real kfp.Client path: nothing listens on 127.0.0.1:9 (discard)."""
    monkeypatch.delenv(remote.HOST_ENV, raising=False)
    args = ["pipeline", command, "--host", "http://127.0.0.1:9", "--data", "/d"]
    if command == "schedule":
        args += ["--cron", "0 0 3 * * *"]
    start = time.monotonic()
    result = runner.invoke(app, args)
    seconds = time.monotonic() - start
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "http://127.0.0.1:9 is unreachable" in lines[0]
    assert "Traceback" not in result.output
    assert seconds < 10  # compile is skipped: the probe comes first


def test_server_errors_are_one_line(fake_kfp, monkeypatch) -> None:
    """An API error (e.g. a rejected package) or a failing client constructor: one line."""

    class RejectedError(Exception):
        reason = "Bad Request"
        body = '{"error":"invalid pipeline spec"}\n{"more": "lines"}'

    def reject(self, pipeline_file, **kwargs):
        raise RejectedError()

    monkeypatch.setattr(FakeClient, "create_run_from_pipeline_package", reject)
    result = runner.invoke(app, ["pipeline", "submit", "--host", HOST, "--data", "/d"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"error: Kubeflow Pipelines at {HOST}: RejectedError: Bad Request "
        '{"error":"invalid pipeline spec"}'
    )

    def refuse(self, *args, **kwargs):
        raise TimeoutError("Failed getting healthz endpoint after 5 attempts.")

    monkeypatch.setattr(FakeClient, "__init__", refuse)
    result = runner.invoke(app, ["pipeline", "submit", "--host", HOST, "--data", "/d"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "TimeoutError: Failed getting healthz endpoint" in line
