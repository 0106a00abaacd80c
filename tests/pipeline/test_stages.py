"""The pipeline's step functions, run in one process: same model as ``noisyad train``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from noisyad import stages
from noisyad.data import open_source
from noisyad.data.demo import make_demo_dataset
from noisyad.detectors import PatchCoreConfig
from noisyad.purification import PurificationError
from noisyad.training import TrainConfig, train_category

CONFIG = TrainConfig(detector=PatchCoreConfig(input_size=64), subsets=2, keep_fraction=0.8)


def run_steps(data: Path, work: Path, config: TrainConfig = CONFIG) -> stages.Purified:
    """ingest -> partition -> sub-models -> aggregate_filter -> train_final, as the pipeline."""
    stages.ingest(str(data), "", work / "dataset")
    ids = stages.partition_step(
        work / "dataset", config.subsets, config.keep_fraction, config.seed, work / "subsets.json"
    )
    files = []
    for index in ids:
        files.append(work / f"scores-{index}")
        stages.train_submodel(
            work / "dataset", work / "subsets.json", index, config.detector, files[-1]
        )
    purified = stages.aggregate_filter(
        work / "dataset",
        work / "subsets.json",
        files[::-1],  # the fan-in may deliver the sub-models in any order
        config.aggregate,
        config.keep_fraction,
        work / "purified",
    )
    stages.train_final(work / "dataset", work / "purified", config, work / "model")
    return purified


@pytest.fixture(scope="module")
def steps(
    tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, stages.Purified]:
    """The work folder of one in-process run of the steps, and what aggregate_filter decided."""
    work = tmp_path_factory.mktemp("steps")
    return work, run_steps(tiny_demo, work)


def test_steps_train_the_model_train_category_trains(
    steps: tuple[Path, stages.Purified], tiny_demo: Path, tmp_path: Path
) -> None:
    work, purified = steps
    reference = tmp_path / "reference"
    train_category(open_source(tiny_demo, category="brick"), "brick", CONFIG, reference)

    ours = json.loads((work / "model" / "purification.json").read_text())
    theirs = json.loads((reference / "purification.json").read_text())
    assert [r["kept"] for r in ours["images"]] == [r["kept"] for r in theirs["images"]]
    assert [r["subset"] for r in ours["images"]] == [r["subset"] for r in theirs["images"]]
    np.testing.assert_allclose(
        [r["aggregated"] for r in ours["images"]], [r["aggregated"] for r in theirs["images"]]
    )

    training = json.loads((work / "model" / "training.json").read_text())
    expected = json.loads((reference / "training.json").read_text())
    assert set(training) == set(expected)
    for key in ("n_train", "n_kept", "bank_size", "config", "threshold_rule", "category"):
        assert training[key] == expected[key], key
    assert training["threshold"] == pytest.approx(expected["threshold"])
    assert purified.summary["n_kept"] == training["n_kept"] == 24
    assert purified.summary["purification"]["n_defective"] == 6


def test_model_folder_evaluates_and_exports(
    steps: tuple[Path, stages.Purified], tmp_path: Path
) -> None:
    work, _ = steps
    evaluation = stages.evaluate_step(work / "dataset", work / "model")
    assert evaluation.metrics["n_test"] == 12
    assert 0.0 <= evaluation.metrics["image_auroc"] <= 1.0
    assert evaluation.metrics["purification"]["n_train"] == 30
    rows = stages.test_score_rows(evaluation)
    assert len(rows) == 12 and {r["label"] for r in rows} == {0, 1}

    path = stages.export_step(work / "model", tmp_path / "onnx" / "model.onnx")
    assert path.is_file()
    assert stages.model_info(work / "model") == {
        "category": "brick",
        "backbone": "mobilenetv2_100",
        "input_size": 64,
    }


def test_dataset_snapshot_is_self_contained(tiny_demo: Path, tmp_path: Path) -> None:
    summary = stages.ingest(str(tiny_demo), "brick", tmp_path / "dataset")
    assert (summary["n_train"], summary["n_test"], summary["n_test_anomalous"]) == (30, 12, 6)
    assert summary["has_contamination_sidecar"]

    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "dataset", moved)  # a step on another pod sees another path
    manifest = stages.load_dataset(moved)
    assert all(
        Path(s.path).is_file() and Path(s.path).is_relative_to(moved) for s in manifest.samples
    )
    assert all(Path(s.mask_path).is_file() for s in manifest.samples if s.mask_path)
    assert int(stages.defective_flags(moved).sum()) == 6


def test_ingest_needs_a_category_when_the_source_has_several(tmp_path: Path) -> None:
    make_demo_dataset(
        tmp_path / "two",
        n_train_normal=4,
        n_test_normal=2,
        n_test_defective=2,
        categories=("brick", "grass"),
    )
    with pytest.raises(ValueError, match="pass one category"):
        stages.ingest(str(tmp_path / "two"), "", tmp_path / "dataset")
    assert stages.ingest(str(tmp_path / "two"), "grass", tmp_path / "d")["n_train"] == 4


def test_partition_rejects_settings_before_any_fit(tiny_demo: Path, tmp_path: Path) -> None:
    stages.ingest(str(tiny_demo), "", tmp_path / "dataset")
    with pytest.raises(PurificationError, match="too many"):
        stages.partition_step(tmp_path / "dataset", 20, 0.8, 0, tmp_path / "s.json")
    with pytest.raises(PurificationError, match="keep fraction"):
        stages.partition_step(tmp_path / "dataset", 3, 1.5, 0, tmp_path / "s.json")


def test_aggregate_filter_rejects_missing_sub_model_scores(tiny_demo: Path, tmp_path: Path) -> None:
    stages.ingest(str(tiny_demo), "", tmp_path / "dataset")
    stages.partition_step(tmp_path / "dataset", 3, 0.8, 0, tmp_path / "s.json")
    for index in (0, 2):
        with (tmp_path / f"scores-{index}").open("wb") as handle:
            np.savez(handle, index=index, scores=np.zeros(30), fitted=np.zeros(30, bool))
    files = [tmp_path / "scores-0", tmp_path / "scores-2"]
    with pytest.raises(ValueError, match="incomplete"):
        stages.aggregate_filter(
            tmp_path / "dataset", tmp_path / "s.json", files, "mean", 0.8, tmp_path / "p"
        )


def test_data_fingerprint_changes_when_the_data_changes(tiny_demo: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_demo, data)
    before = stages.data_fingerprint(str(data))
    assert before == stages.data_fingerprint(str(data)) and len(before) == 16
    (data / "brick" / "train" / "good" / "000.png").unlink()
    assert stages.data_fingerprint(str(data)) != before
    assert stages.data_fingerprint("s3://bucket/prefix") == ""


def test_flat_metrics_keeps_numbers_only() -> None:
    values = {"a": 1, "b": None, "c": "text", "d": {"e": 0.5, "f": float("nan")}, "g": True}
    assert stages.flat_metrics(values) == {"a": 1.0, "d_e": 0.5, "g": 1.0}


def test_automatic_keep_rule_runs_through_the_steps(
    steps: tuple[Path, stages.Purified], tmp_path: Path
) -> None:
    work, _ = steps
    files = sorted(work.glob("scores-*"))
    purified = stages.aggregate_filter(
        work / "dataset", work / "subsets.json", files, "cross_mean", "auto", tmp_path / "p"
    )
    assert purified.summary["keep_fraction"] == "auto"
    assert 0 < purified.summary["n_kept"] <= 30

    config = CONFIG.model_copy(update={"keep_fraction": "auto"})
    report = stages.train_final(work / "dataset", tmp_path / "p", config, tmp_path / "model")
    training = json.loads((tmp_path / "model" / "training.json").read_text())
    assert training["config"]["keep_fraction"] == "auto"
    assert report.n_kept == purified.summary["n_kept"] and report.n_train == 30
