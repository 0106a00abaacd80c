"""Bad pipeline settings fail before the pipeline starts, leaving no MLflow run behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from noisyad.cli import app
from noisyad.data.demo import make_demo_dataset


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("validation") / "demo"
    make_demo_dataset(
        root,
        contamination=0.2,
        categories=("brick",),
        n_train_normal=12,
        n_test_normal=2,
        n_test_defective=2,
    )
    return root


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--subsets", "1", "subsets (K) = 1"),
        ("--subsets", "20", "subsets (K) = 20 is too many for 15 training images"),
        ("--keep-fraction", "2", "keep fraction = 2.0"),
        ("--category", "nosuch", "Unknown category nosuch"),
    ],
)
def test_bad_settings_fail_before_any_run(
    tiny_demo: Path, tmp_path: Path, option: str, value: str, message: str
) -> None:
    db = tmp_path / "mlflow.db"
    result = CliRunner().invoke(
        app,
        ["pipeline", "run", "--data", str(tiny_demo), "--out", str(tmp_path / "runs"),
         "--tracking-uri", f"sqlite:///{db}", "-q", option, value],
    )  # fmt: skip

    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not db.exists()  # no MLflow run was started
    assert not list((tmp_path / "runs").glob("2*"))  # no run folder either
