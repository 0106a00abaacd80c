"""MLflow helpers: failure marking, nested runs, the unreachable-server check, the champion gate."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from noisyad import tracking


def test_tracking_uri_comes_from_argument_then_environment_then_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri(None) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.resolve_uri("") == "http://mlflow:5000"
    assert tracking.resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_artifacts_go_beside_the_sqlite_store(tmp_path: Path, tracking_uri: str) -> None:
    run_id = tracking.start_run(tracking_uri, "t", "parent")
    with tracking.step(tracking_uri, run_id, "s") as log:
        log.log_text("hello", "note.txt")
    assert (tmp_path / "mlruns").is_dir()
    assert list((tmp_path / "mlruns").rglob("note.txt"))


def test_unreachable_server_fails_in_seconds() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.client(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 10


def test_failing_step_marks_parent_and_nested_run_failed(tracking_uri: str) -> None:
    run_id = tracking.start_run(tracking_uri, "t", "parent")
    failing = tracking.step(tracking_uri, run_id, "train_submodel", child="submodel-1")
    with pytest.raises(RuntimeError, match="boom"), failing as log:
        log.log_metrics({"n_fitted": 3})
        raise RuntimeError("boom")

    mlflow_client = tracking.client(tracking_uri)
    parent = mlflow_client.get_run(run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["noisyad.failed_step"] == "train_submodel/submodel-1"
    assert "RuntimeError: boom" in parent.data.tags["noisyad.error"]
    errors = [a.path for a in mlflow_client.list_artifacts(run_id, "errors")]
    assert errors == ["errors/train_submodel_submodel-1.txt"]

    children = mlflow_client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    assert [c.info.run_name for c in children] == ["submodel-1"]
    assert children[0].info.status == "FAILED"
    assert children[0].data.metrics["n_fitted"] == 3


def test_rerun_step_reuses_its_nested_run_and_finishes_it(tracking_uri: str) -> None:
    run_id = tracking.start_run(tracking_uri, "t", "parent")
    with pytest.raises(ValueError), tracking.step(tracking_uri, run_id, "s", child="submodel-0"):
        raise ValueError("first attempt")
    tracking.set_status(tracking_uri, run_id, "RUNNING")  # what `pipeline run` does on resume
    with tracking.step(tracking_uri, run_id, "s", child="submodel-0", finish=True):
        pass

    mlflow_client = tracking.client(tracking_uri)
    parent = mlflow_client.get_run(run_id)
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert parent.info.status == "FINISHED"


@pytest.mark.parametrize(
    ("new", "champion", "expected"),
    [
        (0.9, None, True),
        (0.9, 0.9, True),
        (0.91, 0.9, True),
        (0.89, 0.9, False),
        (None, 0.9, False),
    ],
)
def test_champion_gate_rule(new, champion, expected) -> None:
    assert tracking.should_promote(new, champion) is expected


def register(uri: str, onnx_path: Path, image: np.ndarray, auroc: float, run_id=None) -> dict:
    run_id = run_id or tracking.start_run(uri, "t", f"auroc {auroc}")
    return tracking.register_onnx(uri, run_id, onnx_path, "tiny", image, {"image_auroc": auroc})


def test_champion_gate_and_one_version_per_run(
    tracking_uri: str, tiny_onnx: Path, example_image: np.ndarray
) -> None:
    first = register(tracking_uri, tiny_onnx, example_image, 0.90)
    assert (first["version"], first["aliases"]) == ("1", ["candidate", "champion"])

    worse = register(tracking_uri, tiny_onnx, example_image, 0.85)
    assert (worse["version"], worse["aliases"]) == ("2", ["candidate"])

    equal_run = tracking.start_run(tracking_uri, "t", "equal")
    equal = register(tracking_uri, tiny_onnx, example_image, 0.90, equal_run)
    assert (equal["version"], equal["aliases"]) == ("3", ["candidate", "champion"])
    assert equal["created"]

    again = register(tracking_uri, tiny_onnx, example_image, 0.90, equal_run)
    assert (again["version"], again["created"]) == ("3", False)

    mlflow_client = tracking.client(tracking_uri)
    assert len(mlflow_client.search_model_versions("name = 'tiny'")) == 3
    assert str(mlflow_client.get_model_version_by_alias("tiny", "champion").version) == "3"
    assert mlflow_client.get_model_version("tiny", "2").tags["image_auroc"] == "0.85"


def test_registered_model_loads_with_its_signature(
    tracking_uri: str, tiny_onnx: Path, example_image: np.ndarray
) -> None:
    import mlflow.pyfunc

    run_id = tracking.start_run(tracking_uri, "models-here", "parent")
    registration = register(tracking_uri, tiny_onnx, example_image, 0.9, run_id)
    mlflow_client = tracking.client(tracking_uri)
    experiment = mlflow_client.get_run(run_id).info.experiment_id
    logged = mlflow_client.search_logged_models(experiment_ids=[experiment])
    assert [m.source_run_id for m in logged] == [run_id]  # shown with the run, not in Default

    model = mlflow.pyfunc.load_model(f"models:/tiny@{tracking.CHAMPION}")
    inputs = model.metadata.get_input_schema().inputs
    assert inputs[0].type == np.dtype("uint8") and list(inputs[0].shape) == [-1, 8, 8, 3]
    outputs = model.predict(example_image)
    assert set(outputs) == {"anomaly_map", "image_score", "label"}
    assert registration["model_uri"] == "models:/tiny/1"
