"""The served model: an exported noisyad ONNX graph on ONNX Runtime, found by path or MLflow URI.

:func:`load_model` accepts

* a ``.onnx`` file, a folder holding one (an MLflow ONNX-flavour folder or a Triton version
  folder), or a Triton model folder ``<model>/<version>/model.onnx``;
* ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: the registered MLflow model
  version is downloaded (tracking server from ``MLFLOW_TRACKING_URI`` or ``tracking_uri``)
  and served under the registered name and version number;
* ``runs:/<run id>/<artifact path>``: an ONNX artifact of a run.

The v2 contract of the served model is the Triton model configuration that
:mod:`serving.triton` writes, so a client sees the same names, datatypes and shapes from
``noisyad serve`` and from Triton: ``image`` UINT8 ``[-1, S, S, 3]`` in; ``anomaly_map`` FP32
``[-1, S, S]``, ``image_score`` FP32 ``[-1, 1]`` and ``label`` INT64 ``[-1, 1]`` out (Triton
needs a dimension besides the batch, hence the trailing 1).

Example:
    >>> model = load_model("models:/noisyad-brick@champion")        # doctest: +SKIP
    >>> model.run(images)["image_score"].shape                       # doctest: +SKIP
    (4, 1)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.protocol import ProtocolError, TensorHeader

logger = logging.getLogger(__name__)

# The ONNX contract of noisyad.export, restated so the server never imports torch.
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "image_score", "label")

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class TensorSpec:
    """Name, v2 datatype and shape (``-1`` = batch) of one model input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_v2(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ServedModel:
    """One loaded model and its v2 contract.

    Attributes:
        name: Model name in the URL (``/v2/models/<name>``).
        version: Version string (``"1"`` for a file, the registry version for MLflow).
        path: The ONNX file.
        session: The ONNX Runtime session.
        input_size: Square side S the model takes.
        threshold: Image-score threshold of the label.
        max_batch_size: Largest batch a request may carry.
        metadata: The ``noisyad.*`` ONNX metadata.
        source: What was asked for (path or URI).
    """

    name: str
    version: str
    path: Path
    session: object
    input_size: int
    threshold: float
    max_batch_size: int
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def inputs(self) -> list[TensorSpec]:
        size = self.input_size
        return [TensorSpec(INPUT_NAME, "UINT8", (-1, size, size, 3))]

    @property
    def outputs(self) -> list[TensorSpec]:
        size = self.input_size
        return [
            TensorSpec("anomaly_map", "FP32", (-1, size, size)),
            TensorSpec("image_score", "FP32", (-1, 1)),
            TensorSpec("label", "INT64", (-1, 1)),
        ]

    def check_inputs(self, inputs: list[TensorHeader]) -> TensorHeader:
        """Check a request's inputs against the contract; return the image input.

        Raises:
            ProtocolError: Naming the wrong input, datatype, shape or batch size.
        """
        spec = self.inputs[0]
        expected = f"'{spec.name}' ({spec.datatype}, shape {list(spec.shape)})"
        for tensor in inputs:
            if tensor.name != spec.name:
                raise ProtocolError(
                    f"unknown input '{tensor.name}' for model '{self.name}'; "
                    f"the model takes one input {expected}"
                )
        tensor = inputs[0]
        if tensor.datatype != spec.datatype:
            raise ProtocolError(
                f"input '{tensor.name}' has datatype {tensor.datatype} but model '{self.name}' "
                f"expects {spec.datatype}"
            )
        if len(tensor.shape) != len(spec.shape) or list(tensor.shape[1:]) != list(spec.shape[1:]):
            raise ProtocolError(
                f"input '{tensor.name}' has shape {tensor.shape} but model '{self.name}' expects "
                f"{list(spec.shape)} (batch, height, width, RGB); resize images to "
                f"{self.input_size}x{self.input_size} as in training, or upload them to /predict"
            )
        batch = tensor.shape[0]
        if batch < 1:
            raise ProtocolError(f"input '{tensor.name}' has an empty batch; send at least 1 image")
        if batch > self.max_batch_size:
            raise ProtocolError(
                f"batch size {batch} exceeds the maximum batch size {self.max_batch_size} of "
                f"model '{self.name}'; split the request"
            )
        return tensor

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on uint8 ``(N, S, S, 3)`` images; outputs shaped as in :attr:`outputs`."""
        results = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        anomaly_map, image_score, label = results
        return {
            "anomaly_map": anomaly_map,
            "image_score": image_score.reshape(-1, 1),
            "label": label.reshape(-1, 1),
        }


def select_providers(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers for ``device``: ``cpu``, ``cuda`` (CPU fallback) or ``auto``.

    ``cuda`` and ``auto`` use the CUDA provider when this onnxruntime build has it; ``cuda``
    warns when it must fall back to the CPU.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        logger.warning(
            "device 'cuda' asked for but this onnxruntime has no CUDA provider; serving on the "
            "CPU (install onnxruntime-gpu for the GPU)"
        )
    return ["CPUExecutionProvider"]


def find_onnx(path: Path) -> Path:
    """The ONNX file behind ``path``: the file itself, or the one model in a folder."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; give an .onnx file or a models:/ URI")
    for candidate in (path / "model.onnx", path / "1" / "model.onnx"):
        if candidate.is_file():
            return candidate
    found = sorted(path.rglob("*.onnx"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path} holds {len(found)} .onnx files; point --model at the one to serve"
            + ("" if found else " (a trained model folder? export it first: noisyad export)")
        )
    return found[0]


def fetch_mlflow_model(uri: str, tracking_uri: str | None = None) -> tuple[Path, str, str]:
    """Download an MLflow model or artifact; return the ONNX file, model name and version.

    Args:
        uri: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``runs:/...``.
        tracking_uri: The tracking server; default ``MLFLOW_TRACKING_URI``.

    Returns:
        The local ONNX file, the name to serve it as, and its version string.
    """
    import mlflow
    from mlflow import MlflowClient

    from noisyad.tracking import HTTP_DEFAULTS, check_reachable, resolve_uri

    # Fail in seconds when the server is down, instead of MLflow's minutes of retries.
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    tracking_uri = resolve_uri(tracking_uri)
    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    if not sys.stderr.isatty():  # no download progress bars in a server's log
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    name, version = None, "1"
    artifact_uri = uri
    if uri.startswith("models:/"):
        reference = uri.removeprefix("models:/").strip("/")
        client = MlflowClient()
        if "@" in reference:
            name, alias = reference.split("@", 1)
            found = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = reference.rpartition("/")
            if not name:
                raise ValueError(f"{uri}: use models:/<name>@<alias> or models:/<name>/<version>")
            found = client.get_model_version(name, number)
        version = str(found.version)
        # Pin the exact version so a concurrent alias move cannot mix two versions.
        artifact_uri = f"models:/{name}/{version}"
    # Limitation: the downloaded copy stays in a temporary folder after the server stops; a
    # managed cache folder would reuse it across restarts and clean it up.
    target = Path(tempfile.mkdtemp(prefix="noisyad-serve-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(target))
    logger.info("Downloaded %s (version %s) to %s", uri, version, local)
    return find_onnx(Path(local)), name or "", version


def session_options(threads: int = 0):
    """ONNX Runtime options of the served session.

    Spinning is off: by default ONNX Runtime's idle worker threads busy-wait for the next
    batch, which takes the cores from the event loop (and the clients) between batches.

    Args:
        threads: Intra-op threads (0 = ONNX Runtime's default, one per core).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return options


def read_metadata(path: Path) -> dict[str, str]:
    """The ``noisyad.*`` key/value metadata of an exported ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in graph.metadata_props if p.key.startswith("noisyad.")}


def load_model(
    source: str | Path,
    *,
    name: str | None = None,
    device: str = "cpu",
    max_batch_size: int = 32,
    threads: int = 0,
    tracking_uri: str | None = None,
) -> ServedModel:
    """Load an exported noisyad model for serving.

    Args:
        source: Path, ``models:/`` or ``runs:/`` URI (see the module docstring).
        name: Name to serve under; default the registered name, else the ONNX metadata's
            category, else the file's stem.
        device: ``cpu`` (default), ``cuda`` or ``auto``.
        max_batch_size: Largest batch accepted per request and formed by the batcher.
        threads: ONNX Runtime intra-op threads (0 = its default, one per core).
        tracking_uri: MLflow tracking server for ``models:/`` URIs.

    Raises:
        FileNotFoundError: When no ONNX file is found.
        ValueError: When the file is not a noisyad export.
    """
    import onnxruntime as ort

    text = str(source)
    version = "1"
    registered = ""
    if text.startswith(("models:/", "runs:/")):
        path, registered, version = fetch_mlflow_model(text, tracking_uri)
    else:
        path = find_onnx(Path(text))

    providers = select_providers(device, ort.get_available_providers())
    session = ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=providers
    )
    metadata = {
        key: value
        for key, value in session.get_modelmeta().custom_metadata_map.items()
        if key.startswith("noisyad.")
    }
    if "noisyad.input_size" not in metadata or "noisyad.threshold" not in metadata:
        raise ValueError(f"{path} is not a noisyad export (no noisyad.* metadata); use export")
    served_name = name or registered or metadata.get("noisyad.category") or path.stem
    if served_name in ("", "None"):
        served_name = path.stem
    model = ServedModel(
        name=served_name,
        version=version,
        path=path,
        session=session,
        input_size=int(metadata["noisyad.input_size"]),
        threshold=float(json.loads(metadata["noisyad.threshold"])),
        max_batch_size=max_batch_size,
        metadata=metadata,
        source=text,
    )
    logger.info(
        "Serving %s version %s from %s (input %dx%d, threshold %.4g, providers %s)",
        model.name,
        model.version,
        path,
        model.input_size,
        model.input_size,
        model.threshold,
        ",".join(model.providers),
    )
    return model
