"""Tests for serving.triton: the repository layout and config.pbtxt, parsed by Triton's schema.

Every config is parsed into Triton's own ``ModelConfig`` protobuf message (shipped with
tritonclient), so a field name, enum or nesting Triton would reject fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from noisyad.cli import app
from serving.triton import PYTHON_MODEL, to_pbtxt, triton_config, write_triton_repository

SAMPLE = Path(PYTHON_MODEL).with_name("config.pbtxt")


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_onnxruntime_repository(onnx_path: Path, tmp_path: Path) -> None:
    model_dir = write_triton_repository(onnx_path, tmp_path / "repo", max_batch_size=16)

    assert model_dir == tmp_path / "repo" / "brick"
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert not (model_dir / "1" / "model.py").exists()
    config = parse((model_dir / "config.pbtxt").read_text())

    assert config.name == "brick"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 16
    (image,) = config.input
    assert (image.name, image.data_type, list(image.dims)) == (
        "image",
        mc.TYPE_UINT8,
        [128, 128, 3],
    )
    outputs = {o.name: o for o in config.output}
    assert list(outputs) == ["anomaly_map", "image_score", "label"]
    assert outputs["anomaly_map"].data_type == mc.TYPE_FP32
    assert list(outputs["anomaly_map"].dims) == [128, 128]
    for name, dtype in (("image_score", mc.TYPE_FP32), ("label", mc.TYPE_INT64)):
        assert outputs[name].data_type == dtype
        assert list(outputs[name].dims) == [1]
        assert outputs[name].HasField("reshape") and list(outputs[name].reshape.shape) == []
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_CPU, 1)
    ]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["noisyad.input_size"] == "128"
    assert float(params["noisyad.threshold"]) > 0


def test_python_backend_repository_carries_the_model_script(onnx_path, tmp_path) -> None:
    model_dir = write_triton_repository(
        onnx_path, tmp_path, name="line3", backend="python", instance_kind="gpu", instance_count=2
    )
    config = parse((model_dir / "config.pbtxt").read_text())

    assert config.name == "line3" and config.backend == "python"
    assert (model_dir / "1" / "model.py").read_text() == PYTHON_MODEL.read_text()
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, 2)
    ]


def test_sample_config_matches_the_writer() -> None:
    """serving/triton_python/config.pbtxt is what the writer produces for the demo model."""
    expected = parse(to_pbtxt(triton_config("brick", 128, backend="python")))
    assert parse(SAMPLE.read_text()) == expected


def test_preferred_batch_sizes_and_bad_settings() -> None:
    config = parse(to_pbtxt(triton_config("m", 64, preferred_batch_sizes=(4, 8))))
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    with pytest.raises(ValueError, match="backend must be one of"):
        triton_config("m", 64, backend="tensorrt")
    with pytest.raises(ValueError, match="instance kind"):
        triton_config("m", 64, instance_kind="tpu")
    with pytest.raises(ValueError, match="preferred batch sizes"):
        triton_config("m", 64, max_batch_size=8, preferred_batch_sizes=(16,))


def test_not_a_noisyad_export_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="not a noisyad export"):
        write_triton_repository(path, tmp_path / "repo")


@pytest.mark.slow
def test_export_cli_writes_the_repository(trained, tmp_path: Path) -> None:
    out = tmp_path / "brick.onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--model",
            str(trained.directory),
            "--out",
            str(out),
            "--triton",
            str(tmp_path / "repo"),
            "--triton-device",
            "gpu",
            "--quiet",
        ],
    )

    assert result.exit_code == 0, result.output
    config = parse((tmp_path / "repo" / "brick" / "config.pbtxt").read_text())
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    copied = tmp_path / "repo" / "brick" / "1" / "model.onnx"
    assert np.array_equal(np.frombuffer(copied.read_bytes(), np.uint8), np.fromfile(out, np.uint8))
