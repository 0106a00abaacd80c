"""Shared fixtures: one small demo dataset and one trained model, built once per session.

The dataset is the real demo (brick texture, contamination 0.2) at a small size: 30 normal
plus 8 hidden defective training tiles, 8 normal and 8 defective test tiles. The model is
trained on it with the default settings (ImageNet MobileNetV2, K = 3, keep fraction 0.8,
cross-mean aggregation). Tests must treat everything here as read-only; a test that needs to
change a model saves a copy to its own ``tmp_path``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from noisyad.data import LoadedImages, Manifest, load_images, open_source
from noisyad.data.demo import DemoSummary, make_demo_dataset
from noisyad.detectors import PatchCore, ScoreResult
from noisyad.training import TrainConfig, TrainReport, train_category

CATEGORY = "brick"
DEMO_SIZES = {
    "contamination": 0.2,
    "n_train_normal": 30,
    "n_test_normal": 8,
    "n_test_defective": 8,
    "categories": (CATEGORY,),
}
INPUT_SIZE = 128  # the default PatchCoreConfig.input_size, used by the session model


@dataclass(frozen=True)
class TrainedModel:
    """The session's trained model folder and what training reported."""

    directory: Path
    report: TrainReport
    config: TrainConfig

    def read_json(self, name: str) -> dict:
        """One of the JSON files training wrote into the model folder."""
        return json.loads((self.directory / name).read_text())


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    """The small demo dataset (written once)."""
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "demo", **DEMO_SIZES)


@pytest.fixture(scope="session")
def category_dir(demo: DemoSummary) -> Path:
    """The dataset's only category folder (where the contamination sidecar lives)."""
    return Path(demo.root) / CATEGORY


@pytest.fixture(scope="session")
def manifest(demo: DemoSummary) -> Manifest:
    """The demo dataset read as an MVTec AD source."""
    return open_source(demo.root)


@pytest.fixture(scope="session")
def trained(manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The final model trained with the default settings (about 10 s, once)."""
    config = TrainConfig(keep_fraction=0.8)
    directory = tmp_path_factory.mktemp("models") / CATEGORY
    report = train_category(manifest, CATEGORY, config, directory)
    return TrainedModel(directory, report, config)


@pytest.fixture(scope="session")
def detector(trained: TrainedModel) -> PatchCore:
    """The trained model loaded back from its folder."""
    return PatchCore.load(trained.directory)


@pytest.fixture(scope="session")
def test_set(manifest: Manifest) -> LoadedImages:
    """The labelled test images (with masks) at the model's input size."""
    samples = manifest.select(split="test", category=CATEGORY)
    return load_images(samples, INPUT_SIZE, with_masks=True)


@pytest.fixture(scope="session")
def test_embeddings(detector: PatchCore, test_set: LoadedImages) -> np.ndarray:
    """Patch features of the test images."""
    return detector.embed(test_set.images)


@pytest.fixture(scope="session")
def test_result(detector: PatchCore, test_embeddings: np.ndarray) -> ScoreResult:
    """The PyTorch model's maps and scores of the test set."""
    return detector.score(test_embeddings)


@pytest.fixture(scope="session")
def train_set(manifest: Manifest) -> LoadedImages:
    """All training images (normal and hidden defective), in manifest order."""
    return load_images(manifest.select(split="train", category=CATEGORY), INPUT_SIZE)


@pytest.fixture(scope="session")
def train_embeddings(detector: PatchCore, train_set: LoadedImages) -> np.ndarray:
    """Patch features of every training image, from the trained model's backbone."""
    return detector.embed(train_set.images)
