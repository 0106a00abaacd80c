"""Tests of noisyad.training: the model folder, purification record, counts and threshold.

The session model (tests/conftest.py) was trained with the default settings on the small
contaminated demo set; these tests check what it wrote against recomputations from the
training images and the demo's evaluation-only sidecar.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from noisyad.data import LoadedImages, Manifest
from noisyad.data.demo import DemoSummary, read_contamination_sidecar
from noisyad.detectors import PatchCore, PatchCoreConfig, ScoreResult
from noisyad.evaluation import evaluate_model
from noisyad.purification import PurificationError, purify
from noisyad.training import TrainConfig, label_threshold, train_category

MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "training.json",
    "purification.json",
    "purified_manifest.json",
}


def test_training_writes_the_model_folder(trained) -> None:
    names = {p.name for p in trained.directory.iterdir()}

    assert names >= MODEL_FILES
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".pickle", ".bin"))]
    record = trained.read_json("training.json")
    assert record["category"] == "brick"
    assert record["skipped"] == []
    assert record["config"]["subsets"] == 3


def test_counts_follow_the_keep_fraction(trained, demo: DemoSummary) -> None:
    n_train = demo.categories["brick"].n_train  # 30 normal + 8 hidden defective
    expected_kept = math.ceil(Fraction(str(trained.config.keep_fraction)) * n_train)

    report = trained.report
    assert (report.n_train, report.n_kept, report.n_skipped) == (38, expected_kept, 0)
    assert n_train == 38 and expected_kept == 31
    table = trained.read_json("purification.json")
    assert len(table["images"]) == 38
    assert sum(r["kept"] for r in table["images"]) == expected_kept
    kept_paths = [r["path"] for r in table["images"] if r["kept"]]
    purified = Manifest.load(trained.directory / "purified_manifest.json")
    assert [s.path for s in purified.samples] == kept_paths
    assert table["cut"] == max(r["aggregated"] for r in table["images"] if r["kept"])
    assert all(r["aggregated"] > table["cut"] for r in table["images"] if not r["kept"])


def test_purification_record_equals_a_recomputation(
    trained, detector: PatchCore, train_set: LoadedImages, train_embeddings: np.ndarray
) -> None:
    """Stage 1 rerun on the same features gives the same subsets, scores and kept images."""
    config = trained.config
    table = trained.read_json("purification.json")

    again = purify(
        detector, train_embeddings, config.subsets, config.keep_fraction, config.aggregate, 0
    )

    assert [r["path"] for r in table["images"]] == [s.path for s in train_set.samples]
    np.testing.assert_array_equal([r["subset"] for r in table["images"]], again.subsets)
    np.testing.assert_allclose([r["scores"] for r in table["images"]], again.score_table.T, 1e-5)
    np.testing.assert_array_equal([r["kept"] for r in table["images"]], again.kept)


def test_threshold_is_the_rule_applied_to_leave_one_out_scores(
    trained, detector: PatchCore, train_embeddings: np.ndarray
) -> None:
    kept = np.array([r["kept"] for r in trained.read_json("purification.json")["images"]])
    settings = trained.read_json("training.json")["config"]
    final = detector.spawn()
    final.fit(train_embeddings[kept])

    expected = label_threshold(
        final.calibration_scores(),
        settings["threshold_quantile"],
        settings["threshold_margin"],
    )

    np.testing.assert_array_equal(final.head.memory_bank, detector.head.memory_bank)
    assert trained.report.threshold == pytest.approx(expected, rel=1e-6)
    assert detector.threshold == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("scores", "quantile", "margin", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0.5, 0.0, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 0.0, 2.5),  # linear interpolation between 2 and 3
        ([4.0, 1.0, 3.0, 2.0], 1.0, 0.0, 4.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0.5, 0.1, 3.3),
        ([0.0, 10.0], 0.99, 0.0, 9.9),
    ],
)
def test_label_threshold_by_hand(
    scores: list[float], quantile: float, margin: float, expected: float
) -> None:
    assert label_threshold(np.array(scores), quantile, margin) == pytest.approx(expected)


def test_evaluation_figures_match_the_sidecar(
    trained,
    manifest: Manifest,
    category_dir: Path,
    demo: DemoSummary,
    test_set: LoadedImages,
    test_result: ScoreResult,
) -> None:
    metrics = evaluate_model(trained.directory, manifest).metrics

    hidden = set(read_contamination_sidecar(category_dir))
    images = trained.read_json("purification.json")["images"]
    defective = [str(Path(r["path"]).resolve()) in hidden for r in images]
    kept = [r["kept"] for r in images]
    n_defective = sum(defective)
    n_defective_kept = sum(d and k for d, k in zip(defective, kept, strict=True))
    n_kept = sum(kept)
    assert n_defective == demo.categories["brick"].n_train_defective == 8
    assert metrics["purification"] == {
        "defects_removed": (n_defective - n_defective_kept) / n_defective,
        "defect_rate_kept": n_defective_kept / n_kept,
        "normals_kept": (n_kept - n_defective_kept) / (38 - n_defective),
        "n_train": 38,
        "n_defective": n_defective,
        "n_kept": n_kept,
        "n_defective_kept": n_defective_kept,
    }

    labels = [s.label for s in test_set.samples]
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, test_result.image_scores))
    # Behaviour on the real demo tiles: far better than chance, most defects removed.
    assert metrics["image_auroc"] >= 0.85
    assert metrics["pixel_auroc"] >= 0.75
    assert metrics["purification"]["defects_removed"] >= 0.5
    assert metrics["purification"]["normals_kept"] >= 0.9


@pytest.mark.slow
def test_no_purify_keeps_every_image(manifest: Manifest, tmp_path: Path) -> None:
    config = TrainConfig(purify=False, detector=PatchCoreConfig(input_size=64))

    report = train_category(manifest, "brick", config, tmp_path / "model")

    assert report.n_kept == report.n_train == 38
    assert not (tmp_path / "model" / "purification.json").exists()
    purified = Manifest.load(tmp_path / "model" / "purified_manifest.json")
    assert len(purified.samples) == 38
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["config"]["purify"] is False
    metrics = evaluate_model(tmp_path / "model", manifest).metrics
    assert "purification" not in metrics


@pytest.mark.slow
def test_a_one_image_purified_set_is_a_clear_error(manifest: Manifest, tmp_path: Path) -> None:
    # One kept image has no leave-one-out score, so no threshold could be derived from it.
    config = TrainConfig(keep_fraction=0.02, detector=PatchCoreConfig(input_size=64))  # 1 of 38
    with pytest.raises(PurificationError, match="at least 2 training images, and 1 of"):
        train_category(manifest, "brick", config, tmp_path / "model")
    assert not (tmp_path / "model" / "config.json").exists()


def test_impossible_settings_fail_before_any_image_is_decoded(
    manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("images were decoded before the settings were checked")

    monkeypatch.setattr("noisyad.training.load_images", no_loading)

    with pytest.raises(PurificationError, match="subsets"):
        train_category(manifest, "brick", TrainConfig(subsets=30), tmp_path)
    with pytest.raises(PurificationError, match="keep fraction"):
        train_category(manifest, "brick", TrainConfig(keep_fraction=0.0), tmp_path)
    with pytest.raises(ValueError, match="no training images for category 'grass'"):
        train_category(manifest, "grass", TrainConfig(), tmp_path)
    assert not any(tmp_path.iterdir())
