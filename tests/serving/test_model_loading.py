"""Tests for serving.model: finding the ONNX file, providers, and models:/ URIs from MLflow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from noisyad import export
from serving import model as served
from serving.model import find_onnx, load_model, select_providers
from serving.triton import write_triton_repository


def test_contract_names_match_the_exporter() -> None:
    """The server restates the ONNX contract (to avoid importing torch): it must agree."""
    assert served.INPUT_NAME == export.INPUT_NAME
    assert served.OUTPUT_NAMES == export.OUTPUT_NAMES


def test_loads_file_folder_and_triton_model_folder(onnx_path: Path, tmp_path: Path) -> None:
    model_dir = write_triton_repository(onnx_path, tmp_path / "repo")
    for source in (onnx_path, model_dir, model_dir / "1"):
        model = load_model(source, max_batch_size=4)
        assert (model.name, model.version, model.input_size) == ("brick", "1", 128)
        assert model.max_batch_size == 4
        assert model.threshold > 0
    assert load_model(onnx_path, name="line-3").name == "line-3"


def test_outputs_follow_the_triton_shapes(served_model, images, direct) -> None:
    outputs = served_model.run(images)
    assert outputs["image_score"].shape == (4, 1) and outputs["label"].shape == (4, 1)
    np.testing.assert_array_equal(outputs["image_score"][:, 0], direct["image_score"])


def test_missing_and_ambiguous_paths(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_onnx(tmp_path / "nothing")
    (tmp_path / "two").mkdir()
    for name in ("a.onnx", "b.onnx"):
        shutil.copy(onnx_path, tmp_path / "two" / name)
    with pytest.raises(FileNotFoundError, match="holds 2 .onnx files"):
        find_onnx(tmp_path / "two")


def test_providers() -> None:
    cpu = ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu", both) == cpu
    assert select_providers("cuda", both) == both
    assert select_providers("auto", both) == both
    assert select_providers("auto", cpu) == cpu
    assert select_providers("cuda", cpu) == cpu  # falls back with a warning
    with pytest.raises(ValueError, match="device must be one of"):
        select_providers("tpu", cpu)


def test_serve_command_reports_a_bad_model_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--model", str(tmp_path / "missing.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "missing.onnx does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # sqlalchemy, inside mlflow
def test_models_uri_loads_the_champion_from_mlflow(onnx_path, tmp_path, images, direct) -> None:
    """Register the model with MLflow's ONNX flavour (as the pipeline does); serve @champion."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment("serving-test")
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name="onnx_model",
            registered_model_name="noisyad-brick",
            pip_requirements=["onnxruntime"],  # skips MLflow's slow requirement inference
        )
    mlflow.register_model(info.model_uri, "noisyad-brick")  # version 2
    MlflowClient().set_registered_model_alias("noisyad-brick", "champion", "1")

    model = load_model("models:/noisyad-brick@champion", tracking_uri=tracking)
    assert (model.name, model.version) == ("noisyad-brick", "1")
    np.testing.assert_array_equal(model.run(images)["image_score"][:, 0], direct["image_score"])

    latest = load_model("models:/noisyad-brick/2", tracking_uri=tracking)
    assert latest.version == "2"
    with pytest.raises(Exception, match="champion2|alias"):
        load_model("models:/noisyad-brick@champion2", tracking_uri=tracking)


def test_noisyad_serve_is_registered() -> None:
    from typer.testing import CliRunner

    from noisyad.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--max-delay-ms", "--token"):
        assert option in result.output


def test_unreachable_tracking_server_fails_in_seconds() -> None:
    import time

    from noisyad.tracking import TrackingError

    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9 is unreachable"):
        served.fetch_mlflow_model("models:/noisyad-brick@champion", "http://127.0.0.1:9")
    assert time.monotonic() - start < 10
