"""Tests of the command line (noisyad.cli) through typer's CliRunner.

One tiny dataset is written with ``noisyad demo-data`` and one model trained on it at 64 px
with ``noisyad train``; evaluate and export run on that model. User errors must end with
exit code 2 and one message naming the problem, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from noisyad.cli import app
from noisyad.data import open_source
from noisyad.data.demo import make_demo_dataset
from noisyad.evaluation import evaluate_model

runner = CliRunner()
TINY = {"categories": ("brick",), "n_train_normal": 12, "n_test_normal": 4, "n_test_defective": 4}
FAST = ["--input-size", "64", "--keep-fraction", "0.8", "--quiet"]


@pytest.fixture(autouse=True)
def restore_logging():
    """The CLI points the root logger at the runner's (then closed) stderr: undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 2, one error line naming every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``noisyad demo-data`` with the generator shrunk to 15 training and 8 test tiles."""
    out = tmp_path_factory.mktemp("cli") / "demo"
    with pytest.MonkeyPatch.context() as patch:
        small = functools.partial(make_demo_dataset, **TINY)
        patch.setattr("noisyad.data.demo.make_demo_dataset", small)
        result = invoke("demo-data", "--out", out, "--contamination", "0.2", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert f"demo dataset written to {out} (23 images)" in result.stdout
    return out


@pytest.fixture(scope="module")
def cli_model(cli_data: Path) -> tuple[Path, dict, str]:
    """``noisyad train --json`` on the tiny dataset: (model folder, --json file, stdout)."""
    out = cli_data.parent / "model"
    report = cli_data.parent / "train.json"
    result = invoke("train", "--data", cli_data, "--out", out, "--json", report, *FAST)
    assert result.exit_code == 0, result.output
    return out, json.loads(report.read_text()), result.stdout


def test_demo_data_writes_the_requested_contamination(cli_data: Path) -> None:
    sidecar = json.loads((cli_data / "brick" / "train_contamination.json").read_text())

    assert (sidecar["contamination"], sidecar["seed"], sidecar["n_defective"]) == (0.2, 3, 3)
    assert len(list((cli_data / "brick" / "train" / "good").glob("*.png"))) == 15


def test_demo_data_refuses_a_non_empty_folder(cli_data: Path) -> None:
    result = invoke("demo-data", "--out", cli_data)

    assert_user_error(result, str(cli_data), "not empty")


@pytest.mark.slow
def test_train_reports_counts_as_json(cli_model: tuple[Path, dict, str]) -> None:
    model, report, stdout = cli_model

    assert json.loads(stdout) == report
    brick = report["brick"]
    assert (brick["n_train"], brick["n_kept"], brick["n_skipped"]) == (15, 12, 0)
    assert brick["model_dir"] == str(model)
    assert (model / "model.safetensors").is_file()
    assert json.loads((model / "config.json").read_text())["config"]["input_size"] == 64


@pytest.mark.slow
def test_evaluate_json_holds_the_metrics(
    cli_model: tuple[Path, dict, str], cli_data: Path, tmp_path: Path
) -> None:
    model, _, _ = cli_model

    result = invoke("evaluate", "--model", model, "--data", cli_data, "--json", tmp_path / "m.json")

    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert json.loads(result.stdout) == metrics
    expected = evaluate_model(model, open_source(cli_data)).metrics
    for key in ("image_auroc", "pixel_auroc", "aupro", "purification", "n_test", "threshold"):
        assert metrics[key] == pytest.approx(expected[key]), key
    assert metrics["purification"]["n_defective"] == 3
    assert metrics["purification"]["n_kept"] == 12
    assert metrics["n_test"] == 8


@pytest.mark.slow
def test_export_writes_an_onnx_file(cli_model: tuple[Path, dict, str], tmp_path: Path) -> None:
    model, _, _ = cli_model

    result = invoke("export", "--model", model, "--out", tmp_path / "brick.onnx", "--quiet")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "brick.onnx")
    graph = onnx.load(str(tmp_path / "brick.onnx"))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["noisyad.input_size"] == "64"


# ----------------------------------------------------------------------------- user errors


def test_empty_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    result = invoke("train", "--data", tmp_path / "empty", "--out", tmp_path / "m", *FAST)

    assert_user_error(result, "No images found", str(tmp_path / "empty"))


def test_nonexistent_path_is_a_user_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dataset"

    result = invoke("train", "--data", missing, "--out", tmp_path / "m", *FAST)

    assert_user_error(result, str(missing), "does not exist")


def test_evaluate_without_a_model_is_a_user_error(cli_data: Path, tmp_path: Path) -> None:
    result = invoke("evaluate", "--model", tmp_path, "--data", cli_data)

    assert_user_error(result, str(tmp_path), "no trained model")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--subsets", "8", "subsets (K) = 8 is too many for 15 training images"),
        ("--subsets", "1", "subsets (K) = 1"),
        ("--keep-fraction", "0", "keep fraction = 0.0"),
        ("--keep-fraction", "1.5", "keep fraction = 1.5"),
    ],
)
def test_unworkable_purification_settings_are_user_errors(
    cli_data: Path, tmp_path: Path, option: str, value: str, message: str
) -> None:
    result = invoke("train", "--data", cli_data, "--out", tmp_path / "m", *FAST, option, value)

    assert_user_error(result, message)
    assert not (tmp_path / "m").exists()


def test_missing_weights_file_is_a_user_error(cli_data: Path, tmp_path: Path) -> None:
    weights = tmp_path / "nope.safetensors"

    result = invoke(
        "train", "--data", cli_data, "--out", tmp_path / "m", "--weights", weights, *FAST
    )

    assert_user_error(result, str(weights), "does not exist")


@pytest.fixture
def corrupt_data(cli_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny dataset with one training PNG replaced by garbage."""
    data = tmp_path / "demo"
    shutil.copytree(cli_data, data)
    bad = data / "brick" / "train" / "good" / "005.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG file")
    return data, bad


def test_corrupt_image_stops_training_and_is_named(
    corrupt_data: tuple[Path, Path], tmp_path: Path
) -> None:
    data, bad = corrupt_data

    result = invoke("train", "--data", data, "--out", tmp_path / "m", "--bad-input", "error", *FAST)

    assert_user_error(result, str(bad), "not a readable image")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_corrupt_image_is_skipped_and_recorded(
    corrupt_data: tuple[Path, Path], tmp_path: Path
) -> None:
    data, bad = corrupt_data

    result = invoke("train", "--data", data, "--out", tmp_path / "m", "--bad-input", "skip", *FAST)

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["brick"]
    assert (report["n_train"], report["n_skipped"], report["n_kept"]) == (14, 1, 12)
    record = json.loads((tmp_path / "m" / "training.json").read_text())
    assert [s["path"] for s in record["skipped"]] == [str(bad)]
    assert "not a readable image" in record["skipped"][0]["reason"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--backbone", "nosuchnet", "backbone = 'nosuchnet' is not a timm architecture"),
        ("--device", "banana", "device = 'banana': use cpu, cuda or cuda:N"),
    ],
)
def test_bad_backbone_or_device_is_a_user_error(
    cli_data: Path, tmp_path: Path, option: str, value: str, message: str
) -> None:
    result = invoke("train", "--data", cli_data, "--out", tmp_path / "m", *FAST, option, value)

    assert_user_error(result, message)


def test_retraining_without_purification_drops_the_old_purification_table(
    cli_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m"
    assert invoke("train", "--data", cli_data, "--out", out, *FAST).exit_code == 0
    assert (out / "purification.json").is_file()

    assert invoke("train", "--data", cli_data, "--out", out, "--no-purify", *FAST).exit_code == 0

    assert not (out / "purification.json").exists()
    result = invoke("evaluate", "--model", out, "--data", cli_data, "--quiet")
    metrics = json.loads(result.stdout)
    assert metrics["n_kept"] == metrics["n_train"] == 15
    assert "purification" not in metrics


def test_export_of_a_missing_model_is_a_user_error(tmp_path: Path) -> None:
    result = invoke("export", "--model", tmp_path / "nothing", "--out", tmp_path / "m.onnx")

    assert_user_error(result, "holds no trained model (no config.json)")
