"""Fixtures of the pipeline tests: a tiny demo dataset, an MLflow store, a tiny ONNX model.

The dataset is the real demo (brick, contamination 0.2) cut down to 24 normal + 6 hidden
defective training tiles and 6 + 6 test tiles, so that a whole local pipeline run stays
short. Tests treat it as read-only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from noisyad.data.demo import make_demo_dataset

TINY = {
    "contamination": 0.2,
    "n_train_normal": 24,
    "n_test_normal": 6,
    "n_test_defective": 6,
    "categories": ("brick",),
}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo dataset root (one category, brick)."""
    root = tmp_path_factory.mktemp("pipeline-data") / "tiny"
    make_demo_dataset(root, **TINY)
    return root


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh sqlite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def tiny_onnx_model(threshold: float = 100.0) -> onnx.ModelProto:
    """A stand-in detector with the exported graph's contract (uint8 NHWC in; map, score,
    label out): the anomaly map is the channel mean, the score its maximum."""
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["anomaly_map"], axes=[3], keepdims=0),
        helper.make_node("ReduceMax", ["anomaly_map"], ["image_score"], axes=[1, 2], keepdims=0),
        helper.make_node("Greater", ["image_score", "threshold"], ["above"]),
        helper.make_node("Cast", ["above"], ["label"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 8, 8]),
            helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor("threshold", TensorProto.FLOAT, [], [threshold])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    """A tiny ONNX file with the detector's input and output names."""
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_onnx_model(), str(path))
    return path


@pytest.fixture
def example_image() -> np.ndarray:
    """One uint8 8 x 8 RGB image, the tiny model's input example."""
    return np.random.default_rng(0).integers(0, 255, (1, 8, 8, 3), dtype=np.uint8)
