"""End to end: ``noisyad pipeline run`` on a tiny dataset through kfp.local, with MLflow.

One scenario, because each local pipeline run costs a minute or two here: a step fails (the
MLflow run ends FAILED with the error), the rerun resumes the same MLflow run and runs only
the steps that had not succeeded (the rest come from the step cache), registers the model
and logs the metrics; a third identical run runs no step at all.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import onnxruntime
import pytest
from typer.testing import CliRunner

from noisyad import tracking
from pipelines.cli import app

# Loaded by every step process through PYTHONPATH: train_final fails, as a broken step would.
FAIL_TRAIN_FINAL = """
import noisyad.stages


def _fail(*args, **kwargs):
    raise RuntimeError("injected failure in train_final")


noisyad.stages.train_final = _fail
"""


def executed_steps(run_dir: Path) -> set[str]:
    """The steps kfp.local ran (not served from the cache) in one run folder."""
    steps = set()
    for task in run_dir.glob("*/*"):
        if task.is_dir() and task.name.startswith("for-loop-"):
            steps |= {t.name for t in task.iterdir() if t.is_dir()}
        elif task.is_dir():
            steps.add(task.name)
    return steps


def invoke(args: list[str], json_path: Path) -> tuple[int, dict | None, str]:
    result = CliRunner().invoke(app, [*args, "--json", str(json_path)])
    record = json.loads(json_path.read_text()) if json_path.is_file() else None
    return result.exit_code, record, result.output


@pytest.mark.slow
def test_failure_resume_cache_and_registration(
    tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", "--data", str(tiny_demo), "--subsets", "2", "--input-size", "64"]
    args += ["--out", str(tmp_path / "runs"), "--tracking-uri", uri, "--experiment", "e2e", "-q"]

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_TRAIN_FINAL)
    previous = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), previous])))
    code, _, output = invoke(args, tmp_path / "first.json")
    assert code == 1, output
    assert "injected failure in train_final" in output

    mlflow_client = tracking.client(uri)
    experiment = mlflow_client.get_experiment_by_name("e2e").experiment_id
    parents = mlflow_client.search_runs([experiment], "tags.`noisyad.run_key` != ''")
    assert len(parents) == 1
    failed = parents[0]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["noisyad.failed_step"] == "train_final"
    assert "injected failure" in failed.data.tags["noisyad.error"]

    if previous is None:
        monkeypatch.delenv("PYTHONPATH")
    else:
        monkeypatch.setenv("PYTHONPATH", previous)
    code, second, output = invoke(args, tmp_path / "second.json")
    assert code == 0, output
    assert "Logging error" not in output  # kfp.local's log handlers are put back
    result = second["runs"][0]
    assert result["mlflow_run_id"] == failed.info.run_id
    assert result["mlflow_run"] == "resumed"
    assert executed_steps(Path(result["run_dir"])) == {"train-final", "evaluate", "export-onnx"}

    run = mlflow_client.get_run(failed.info.run_id)
    assert run.info.status == "FINISHED"
    for name in ("image_auroc", "pixel_auroc", "aupro", "n_kept", "threshold", "cut"):
        assert name in run.data.metrics, name
    assert run.data.metrics["purification_defects_removed"] >= 0.0
    assert run.data.params["subsets"] == "2" and run.data.params["category"] == "brick"
    artifacts = {
        a.path
        for d in ("purification", "evaluation")
        for a in mlflow_client.list_artifacts(run.info.run_id, d)
    }
    assert {
        "purification/score_histogram.png",
        "purification/scores.csv",
        "evaluation/anomaly_maps.png",
        "evaluation/roc_curve.png",
        "evaluation/test_scores.csv",
    } <= artifacts
    children = mlflow_client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{failed.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == ["submodel-0", "submodel-1"]
    assert all(c.info.status == "FINISHED" for c in children)

    version = mlflow_client.get_model_version_by_alias("noisyad-brick", "champion")
    assert version.run_id == failed.info.run_id
    assert (result["registered_model"], result["version"]) == (
        "noisyad-brick",
        str(version.version),
    )
    assert set(result["aliases"]) == {"candidate", "champion"}
    assert result["evaluation"]["image_auroc"] == pytest.approx(run.data.metrics["image_auroc"])
    session = onnxruntime.InferenceSession(result["onnx_path"])
    assert [i.name for i in session.get_inputs()] == ["image"]

    code, third, output = invoke(args, tmp_path / "third.json")
    assert code == 0, output
    assert third["runs"][0]["mlflow_run"] == "repeated"
    assert executed_steps(Path(third["runs"][0]["run_dir"])) == set()
    assert len(mlflow_client.search_model_versions("name = 'noisyad-brick'")) == 1


def test_unreachable_tracking_server_stops_the_run_in_seconds(tmp_path: Path) -> None:
    start = time.monotonic()
    result = CliRunner().invoke(
        app, ["run", "--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unreachable" in result.output
    assert time.monotonic() - start < 15
    assert not (tmp_path / "demo-0.2").exists()  # checked before any work


def test_run_key_ignores_the_mlflow_run_id() -> None:
    from pipelines.cli import run_key

    arguments = {"data_uri": "d", "category": "brick", "subsets": 3, "mlflow_run_id": "a"}
    assert run_key(arguments) == run_key({**arguments, "mlflow_run_id": "b"})
    assert run_key(arguments) != run_key({**arguments, "subsets": 4})
    assert run_key(arguments, Path("a")) != run_key(arguments, Path("b"))
