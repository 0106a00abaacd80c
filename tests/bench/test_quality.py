"""The quality sweep in its quick mode, through the command line, checked against the library."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from noisyad import metrics
from noisyad.bench.data import DatasetUnavailableError, check_available
from noisyad.bench.quality import QUICK_DEMO, keep_for, split_method
from noisyad.bench.report import group_rows
from noisyad.cli import app
from noisyad.data import load_images, open_source
from noisyad.data.demo import make_demo_dataset
from noisyad.detectors import PatchCore, PatchCoreConfig

pytestmark = pytest.mark.slow


def available(dataset: str) -> bool:
    try:
        check_available(dataset)
    except DatasetUnavailableError:
        return False
    return True


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """``noisyad bench quality --quick`` once (about 30 s)."""
    out = tmp_path_factory.mktemp("bench")
    datasets = ",".join(d for d in ("demo", "mnist") if available(d))
    result = CliRunner().invoke(
        app,
        ["bench", "quality", "--quick", "--datasets", datasets, "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "quality.json").read_text())
    data["_out"] = out
    data["_stdout"] = result.stdout
    return data


def cell(sweep: dict, **where) -> dict:
    found = [c for c in sweep["cells"] if all(c[k] == v for k, v in where.items())]
    assert len(found) == 1, where
    return found[0]


def test_structure(sweep):
    config = sweep["meta"]["config"]
    assert sweep["meta"]["command"].startswith("noisyad bench quality")
    assert sweep["meta"]["estimate_seconds"] > 0
    assert {"cpu", "cores", "memory_gb", "date"} <= set(sweep["meta"]["machine"])
    methods = {"clean", "none", *config["methods"]}
    datasets = {c["dataset"] for c in sweep["cells"]}
    # Every (dataset, category, seed, alpha) has exactly one cell per method.
    for dataset in datasets:
        for alpha in config["alphas"]:
            got = [
                c["method"]
                for c in sweep["cells"]
                if c["dataset"] == dataset and c["alpha"] == alpha
            ]
            assert sorted(got) == sorted(methods)
    for c in sweep["cells"]:
        assert 0.0 <= c["image_auroc"] <= 1.0
        assert ("pixel_auroc" in c) == (c["dataset"] == "demo")
    assert {r["dataset"] for r in sweep["summary"]["datasets"]} == datasets
    assert sweep["summary"]["claim"], "the claim check is reported"
    for name in ("auroc_vs_alpha_aggregation", "auroc_vs_alpha_keep_rule", "aggregated_scores"):
        assert (sweep["_out"] / "img" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "### Claim at α = 0.2" in sweep["_stdout"]
    assert (sweep["_out"] / "quality.md").read_text().strip() in sweep["_stdout"]


def test_clean_auroc_recomputed_independently(sweep, tmp_path):
    """Train PatchCore on the clean demo set the ordinary way: the table's value comes back."""
    make_demo_dataset(tmp_path, 0.0, 0, categories=("brick",), **QUICK_DEMO)
    manifest = open_source(tmp_path)
    train = load_images(manifest.select(split="train", category="brick"), 128)
    test = load_images(manifest.select(split="test", category="brick"), 128, with_masks=True)
    detector = PatchCore(PatchCoreConfig())
    detector.fit(detector.embed(train.images))
    scores = detector.score(detector.embed(test.images)).image_scores
    expected = metrics.image_auroc([s.label for s in test.samples], scores)
    for alpha in sweep["meta"]["config"]["alphas"]:  # the clean set is the same at every alpha
        got = cell(sweep, dataset="demo", method="clean", alpha=alpha)["image_auroc"]
        assert got == pytest.approx(expected, abs=1e-9)


def test_relations_between_cells(sweep):
    for c in sweep["cells"]:
        if c["method"] == "clean":
            assert c["n_defective_kept"] == 0 and c["normals_kept"] == 1.0
        if c["method"] == "none":
            assert c["n_kept"] == c["n_train"]
        if c["alpha"] == 0.0:
            assert c["n_defective"] == 0 and c["defects_removed"] is None
            twin = cell(
                sweep,
                dataset=c["dataset"],
                category=c["category"],
                seed=c["seed"],
                alpha=0.0,
                method="clean",
            )
            if c["method"] == "none":  # no contamination: nothing to purify
                assert c["image_auroc"] == twin["image_auroc"]
        if c["method"].endswith("/0.8"):
            assert c["n_kept"] == math.ceil(0.8 * c["n_train"] - 1e-9)
    contaminated = [c for c in sweep["cells"] if c["alpha"] > 0 and "/" in c["method"]]
    assert all(c["n_defective"] > 0 and c["defects_removed"] is not None for c in contaminated)


def test_summary_matches_cells(sweep):
    for row in sweep["summary"]["datasets"]:
        members = [
            c
            for c in sweep["cells"]
            if (c["dataset"], c["alpha"], c["method"])
            == (row["dataset"], row["alpha"], row["method"])
        ]
        per_seed = {}
        for c in members:
            per_seed.setdefault(c["seed"], []).append(c["image_auroc"])
        expected = np.mean([np.mean(v) for v in per_seed.values()])
        assert row["image_auroc"]["mean"] == pytest.approx(expected)
        assert row["image_auroc"]["n"] == len(per_seed)


def test_claim_rows_follow_the_summary(sweep):
    index = {(r["dataset"], r["alpha"], r["method"]): r for r in sweep["summary"]["datasets"]}
    for row in sweep["summary"]["claim"]:
        clean = index[(row["dataset"], 0.2, "clean")]["image_auroc"]["mean"]
        purified = index[(row["dataset"], 0.2, row["method"])]["image_auroc"]["mean"]
        assert row["gap_to_clean"] == pytest.approx(clean - purified)
        assert row["within_1_point"] == (clean - purified <= 0.01)


def test_group_rows_average_categories_then_seeds():
    rows = [
        {"dataset": "d", "category": c, "seed": s, "alpha": 0.1, "method": "m",
         "image_auroc": v, "n_kept": 1, "n_train": 2}
        for c, s, v in (("a", 0, 0.6), ("b", 0, 0.8), ("a", 1, 0.9), ("b", 1, 0.9))
    ]  # fmt: skip
    (row,) = group_rows(rows, by_category=False)
    assert row["image_auroc"]["mean"] == pytest.approx(0.8)  # seeds: 0.7 and 0.9
    assert row["image_auroc"]["std"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    assert row["kept_share"]["mean"] == 0.5


def test_keep_rules():
    scores = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 9.0, 8.0, 1.01])
    assert keep_for("oracle", scores, 0.2).sum() == 8
    assert keep_for("0.5", scores, 0.2).sum() == 5
    assert not keep_for("auto", scores, 0.2)[[7, 8]].any()
    np.testing.assert_array_equal(keep_for("auto@3", scores, 0.0), keep_for("auto", scores, 0.0))
    assert split_method("max_var/auto@2")[1] == "auto@2"
    with pytest.raises(ValueError):
        keep_for("most", scores, 0.0)


def test_unknown_dataset_fails_cleanly(tmp_path):
    result = CliRunner().invoke(
        app, ["bench", "quality", "--quick", "--datasets", "imagenet", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unknown benchmark dataset" in result.output
