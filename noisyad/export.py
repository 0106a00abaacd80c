"""ONNX export: the whole detector as one graph from uint8 pixels to map, score and label.

The exported graph is the same torch module that scores at training time
(:meth:`noisyad.detectors.Detector.inference_module`), traced once:

* input ``image``: uint8 ``(batch, S, S, 3)``, RGB, already resized to the model's input
  size S (ImageNet normalisation happens inside the graph); the batch axis is dynamic;
* outputs ``anomaly_map`` float32 ``(batch, S, S)``, ``image_score`` float32 ``(batch,)``,
  ``label`` int64 ``(batch,)`` (1 = anomalous, i.e. score above the carried threshold).

The memory bank's nearest-neighbour search unrolls into chunks with a running minimum, so
ONNX Runtime never holds the full patches x memory-bank distance matrix. The model's
settings travel in the ONNX metadata (``noisyad.*`` keys): input size, threshold, backbone.

Example:
    >>> path = export_onnx("models/brick", "brick.onnx")                 # doctest: +SKIP
    >>> session = onnxruntime.InferenceSession(path)                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from noisyad.detectors import Detector, load_detector

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "image_score", "label")
OPSET = 17


def model_metadata(detector: Detector, model_dir: Path | None) -> dict[str, str]:
    """Key/value metadata stored in the ONNX file."""
    meta = {
        "noisyad.input_size": str(detector.input_size),
        "noisyad.threshold": json.dumps(detector.threshold),
        "noisyad.family": detector.family,
        "noisyad.input_layout": "NHWC uint8 RGB",
    }
    config = getattr(detector, "config", None)
    if config is not None:
        meta["noisyad.config"] = config.model_dump_json()
    if model_dir is not None and (model_dir / "training.json").is_file():
        training = json.loads((model_dir / "training.json").read_text())
        meta["noisyad.category"] = str(training.get("category"))
    return meta


def declare_output_shapes(graph: onnx.ModelProto, size: int) -> None:
    """Write the outputs' true shapes into the graph (the tracer leaves vague symbols)."""
    shapes = {"anomaly_map": ("batch", size, size), "image_score": ("batch",), "label": ("batch",)}
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, value in zip(dims, shapes[output.name], strict=True):
            dim.Clear()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value


def export_onnx(model: str | Path | Detector, out_path: str | Path, opset: int = OPSET) -> Path:
    """Export a trained detector (a model folder or a loaded detector) to ``out_path``.

    Returns:
        The path of the written ``.onnx`` file (a single file, weights embedded).
    """
    model_dir = None
    if isinstance(model, Detector):
        detector = model
    else:
        model_dir = Path(model)
        detector = load_detector(str(model_dir), device="cpu")
    if detector.threshold is None:
        raise ValueError("the model has no label threshold; train it with noisyad train")
    module = detector.inference_module().cpu().eval()
    size = detector.input_size
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its age
        torch.onnx.export(
            module,
            (example,),
            str(out_path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
            dynamo=False,
        )
    graph = onnx.load(str(out_path))
    declare_output_shapes(graph, size)
    onnx.checker.check_model(graph)
    for key, value in model_metadata(detector, model_dir).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(out_path))
    logger.info("ONNX model written to %s (%.1f MB)", out_path, out_path.stat().st_size / 1e6)
    return out_path


def onnx_session(path: str | Path, providers: list[str] | None = None):
    """An ONNX Runtime session on the best available provider (CUDA when present)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), providers=providers)


def run_onnx(session, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported model on uint8 ``(N, S, S, 3)`` images; return outputs by name."""
    outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images)})
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))
