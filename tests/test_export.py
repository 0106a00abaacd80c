"""Tests of the ONNX export: the graph scores exactly like the PyTorch model.

The session model is exported once; the graph runs in ONNX Runtime on the demo test tiles
and its maps, scores and labels are compared with the PyTorch module that scored them at
training time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from noisyad.data import LoadedImages
from noisyad.detectors import PatchCore, PatchCoreConfig, ScoreResult
from noisyad.export import INPUT_NAME, OUTPUT_NAMES, export_onnx, onnx_session, run_onnx

TOLERANCE = 1e-4
pytestmark = pytest.mark.slow  # exports the session model (a few seconds)


@pytest.fixture(scope="module")
def onnx_path(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session model exported from its folder."""
    return export_onnx(trained.directory, tmp_path_factory.mktemp("onnx") / "brick.onnx")


@pytest.fixture(scope="module")
def session(onnx_path: Path):
    """An ONNX Runtime session on the CPU."""
    return onnx_session(onnx_path, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def torch_labels(detector: PatchCore, test_set: LoadedImages) -> np.ndarray:
    """Labels from the PyTorch inference module (the module that gets exported)."""
    with torch.inference_mode():
        _, _, label = detector.inference_module()(torch.from_numpy(test_set.images))
    return label.numpy()


def test_onnx_scores_maps_and_labels_equal_pytorch(
    session, test_set: LoadedImages, test_result: ScoreResult, torch_labels: np.ndarray
) -> None:
    out = run_onnx(session, test_set.images)

    np.testing.assert_allclose(out["image_score"], test_result.image_scores, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(out["anomaly_map"], test_result.anomaly_maps, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(out["label"], torch_labels)
    assert set(torch_labels.tolist()) == {0, 1}  # the comparison covers both labels


def test_labels_follow_the_carried_threshold(
    session, detector: PatchCore, test_set: LoadedImages
) -> None:
    out = run_onnx(session, test_set.images)

    np.testing.assert_array_equal(out["label"], out["image_score"] > detector.threshold)
    assert out["label"].dtype == np.int64
    assert out["anomaly_map"].dtype == out["image_score"].dtype == np.float32


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_dynamic_batch(
    session, batch: int, test_set: LoadedImages, test_result: ScoreResult
) -> None:
    images = test_set.images[np.arange(batch) % len(test_set)]

    out = run_onnx(session, images)

    assert out["anomaly_map"].shape == (batch, 128, 128)
    assert out["image_score"].shape == out["label"].shape == (batch,)
    expected = test_result.image_scores[np.arange(batch) % len(test_set)]
    np.testing.assert_allclose(out["image_score"], expected, rtol=0, atol=TOLERANCE)


def test_graph_takes_uint8_images_with_a_dynamic_batch(onnx_path: Path) -> None:
    graph = onnx.load(str(onnx_path)).graph

    (image,) = graph.input
    assert image.name == INPUT_NAME
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [128, 128, 3]
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    for output in graph.output:
        assert output.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_metadata_carries_the_model_settings(onnx_path: Path, detector: PatchCore) -> None:
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}

    assert {"noisyad.threshold", "noisyad.input_size", "noisyad.config"} <= set(meta)
    assert json.loads(meta["noisyad.threshold"]) == detector.threshold
    assert meta["noisyad.input_size"] == "128"
    assert meta["noisyad.category"] == "brick"
    assert meta["noisyad.family"] == "patchcore"
    assert PatchCoreConfig.model_validate_json(meta["noisyad.config"]) == detector.config


def test_export_refuses_a_model_without_threshold(detector: PatchCore, tmp_path: Path) -> None:
    unfitted = detector.spawn()

    with pytest.raises(ValueError, match="no label threshold"):
        export_onnx(unfitted, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
