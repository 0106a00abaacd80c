"""The speed benchmark: its measuring helpers and a quick run through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from noisyad.bench.scaling import PeakMemory, power_law
from noisyad.bench.speed import speed_markdown
from noisyad.cli import app


def test_power_law_recovers_the_exponent():
    sizes = np.array([10, 20, 40, 80])
    assert power_law(sizes, 3.0 * sizes**2.0) == pytest.approx(2.0)


def test_peak_memory_sees_an_allocation():
    with PeakMemory(0.001) as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        block.sum()
        del block
    assert memory.peak - memory.before > 40


@pytest.mark.slow
def test_quick_speed_run(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "speed",
            "--quick",
            "--sections",
            "extractor,coreset,stage1",
            "--out",
            str(tmp_path),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["command"].startswith("noisyad bench speed")

    extractor = report["extractor"]
    assert [r["batch"] for r in extractor["rows"]] == [1, 16]
    assert all(
        r["pytorch_images_per_s"] > 0 and r["onnxruntime_images_per_s"] > 0
        for r in extractor["rows"]
    )
    assert (
        extractor["max_abs_difference"] < 1e-3
    )  # the exported extractor computes the same features

    coreset = report["coreset"]["rows"]
    assert [r["patches"] for r in coreset] == [2_000, 4_000, 8_000, 16_000]
    assert all(r["selected"] == r["patches"] // 10 for r in coreset)
    assert coreset[-1]["seconds"] > coreset[0]["seconds"]  # cost grows with the bank

    assert [r["k"] for r in report["stage1"]["rows"]] == [2, 3, 5]
    markdown = (tmp_path / "speed.md").read_text()
    assert "### Greedy coreset" in markdown and "### Stage 1 vs K" in markdown
    assert markdown.strip() in result.stdout


def test_unknown_section_is_refused(tmp_path):
    result = CliRunner().invoke(
        app, ["bench", "speed", "--sections", "gpu", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "unknown sections" in result.output


def test_markdown_of_the_capacity_section():
    report = {
        "capacity": {
            "rows": [
                {
                    "n_train": 10,
                    "patches": 2560,
                    "bank_size": 256,
                    "seconds": 1.0,
                    "peak_extra_mb": 5.0,
                }
            ],
            "mb_per_training_image": 0.5,
            "max_training_images": 1000,
            "max_patches": 256000,
            "max_bank_size": 25600,
            "memory_gb": 24.0,
            "time_exponent": 2.0,
            "hours_at_max": 3.0,
        }
    }
    text = speed_markdown(report)
    assert "Extrapolation (not measured)" in text and "1,000 images" in text
