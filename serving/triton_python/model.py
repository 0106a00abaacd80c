"""Triton python-backend model: the exported noisyad graph on ONNX Runtime.

Triton's python backend starts this file in a stub process beside the server and calls
``initialize`` once per model instance, ``execute`` once per batch the dynamic batcher
formed, and ``finalize`` on unload. It runs the same ``model.onnx`` that Triton's ONNX
Runtime backend would, so scores match ``noisyad serve`` and the ONNX file run directly.

The repository writer (``serving.triton.write_triton_repository(..., backend="python")``)
places this file next to ``model.onnx`` in the version folder; ``config.pbtxt`` beside this
file is the contract it serves, and ``client.py`` shows the call.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "image_score", "label")


class TritonPythonModel:
    """One model instance: an ONNX Runtime session on model.onnx."""

    def initialize(self, args):
        # args carries the parsed config.pbtxt and where this instance runs.
        self.config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        providers = ["CPUExecutionProvider"]
        on_gpu = args.get("model_instance_kind") == "GPU"
        if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            device = {"device_id": int(args["model_instance_device_id"])}
            providers = [("CUDAExecutionProvider", device), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=providers)

    def execute(self, requests):
        # The dynamic batcher hands over several requests at once: run them as one
        # batch, then give every request its own rows back, in request order.
        images = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
        sizes = [len(batch) for batch in images]
        batch = np.concatenate(images) if len(images) > 1 else images[0]
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})

        responses = []
        start = 0
        for size in sizes:
            stop = start + size
            # image_score and label leave the graph as (batch,); config.pbtxt
            # declares dims [1] with reshape [], so Triton shows them as (batch, 1).
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value[start:stop]))
                for name, value in zip(OUTPUT_NAMES, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses

    def finalize(self):
        self.session = None
