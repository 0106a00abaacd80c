"""The compiled pipeline: the Kubeflow package holds the fan-out and survives kfp's round trip."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.compile import compile_pipeline

STEPS = {
    "comp-ingest",
    "comp-partition",
    "comp-train-submodel",
    "comp-aggregate-filter",
    "comp-train-final",
    "comp-evaluate",
    "comp-export-onnx",
}


def test_compiled_yaml_has_the_fan_out_and_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    facts = compile_pipeline(out)

    assert facts["round_trip"]
    assert facts["parallel_for"] and facts["collected"]
    assert set(facts["steps"]) == STEPS
    for name in ("data_uri", "category", "subsets", "keep_fraction", "aggregate", "backbone"):
        assert name in facts["parameters"]
    for name in ("input_size", "coreset_ratio", "seed", "tracking_uri", "experiment_name"):
        assert name in facts["parameters"]
    assert "registered_model_name" in facts["parameters"]

    spec = yaml.safe_load(out.read_text())
    loop = next(c for n, c in spec["components"].items() if n.startswith("comp-for-loop"))
    assert "comp-train-submodel" in {
        t["componentRef"]["name"] for t in loop["dag"]["tasks"].values()
    }
    for executor in spec["deploymentSpec"]["executors"].values():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command  # the image carries everything


def test_base_image_is_configurable(tmp_path: Path) -> None:
    facts = compile_pipeline(tmp_path / "p.yaml", image="registry.example/noisyad:1.2")
    assert facts["images"] == ["registry.example/noisyad:1.2"]

    default = compile_pipeline(tmp_path / "default.yaml")
    assert default["images"] == ["noisyad-components:0.1.0-cpu"]
