"""Triton model repository writer: the exported ONNX graph, deployable on Triton as it is.

Triton loads models from a repository laid out as ``<repo>/<model>/config.pbtxt`` (the
contract: names, datatypes, dims, batching, where instances run) and
``<repo>/<model>/<version>/model.onnx``. With ``max_batch_size > 0`` the ``dims`` leave out
the batch axis, and Triton's dynamic batcher merges concurrent requests into one batch.

Triton needs at least one dimension besides the batch, so the per-image outputs
``image_score`` and ``label`` are declared ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``:
the ONNX graph produces ``(batch,)`` and clients receive ``(batch, 1)``. ``noisyad serve``
presents the same shapes, so a client works unchanged against either server.

Two backends:

* ``onnxruntime`` (production): Triton's ONNX Runtime backend runs ``model.onnx`` directly.
* ``python``: Triton's python backend runs ``serving/triton_python/model.py``, which drives
  ONNX Runtime itself on the same ``model.onnx``. This is what the ``tritonserver`` bundled
  in the ``nvidia-pytriton`` wheel can load (it ships the python backend only).

Example:
    >>> write_triton_repository("brick.onnx", "model_repository")          # doctest: +SKIP
    PosixPath('model_repository/brick')
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from serving.model import INPUT_NAME, read_metadata

logger = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "python")
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
PYTHON_MODEL = Path(__file__).parent / "triton_python" / "model.py"
#: ONNX metadata carried into the config's ``parameters`` (readable with get_model_config).
CARRIED_METADATA = (
    "noisyad.input_size",
    "noisyad.threshold",
    "noisyad.category",
    "noisyad.family",
    "noisyad.input_layout",
)
_ENUM_KEYS = {"data_type", "kind", "format"}


def triton_config(
    name: str,
    input_size: int,
    *,
    backend: str = "onnxruntime",
    max_batch_size: int = 32,
    instance_kind: str = "cpu",
    instance_count: int = 1,
    max_queue_delay_us: int = 2000,
    preferred_batch_sizes: tuple[int, ...] = (),
    parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The model configuration as a dict in Triton's ModelConfig field names.

    Args:
        name: Model name (the repository folder).
        input_size: Square input side S of the ONNX graph.
        backend: ``onnxruntime`` or ``python``.
        max_batch_size: Largest batch Triton forms or accepts.
        instance_kind: ``cpu`` or ``gpu``.
        instance_count: Model instances (parallel batches).
        max_queue_delay_us: How long the dynamic batcher waits for a fuller batch.
        preferred_batch_sizes: Batch sizes the batcher tries to form (optional).
        parameters: Free key/value strings (noisyad's ONNX metadata).

    Raises:
        ValueError: On an unknown backend or instance kind, or a non-positive size.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if instance_kind not in INSTANCE_KINDS:
        kinds = tuple(INSTANCE_KINDS)
        raise ValueError(f"instance kind must be one of {kinds}, got {instance_kind!r}")
    if max_batch_size < 1 or instance_count < 1 or input_size < 1:
        raise ValueError("max_batch_size, instance_count and input_size must be positive")
    if any(size < 1 or size > max_batch_size for size in preferred_batch_sizes):
        raise ValueError(f"preferred batch sizes must lie in 1..{max_batch_size}")

    per_image = {"dims": [1], "reshape": {"shape": []}}
    batching: dict[str, Any] = {"max_queue_delay_microseconds": max_queue_delay_us}
    if preferred_batch_sizes:
        batching = {"preferred_batch_size": list(preferred_batch_sizes), **batching}
    config: dict[str, Any] = {
        "name": name,
        "backend": backend,
        "max_batch_size": max_batch_size,
        "input": [
            {"name": INPUT_NAME, "data_type": "TYPE_UINT8", "dims": [input_size, input_size, 3]}
        ],
        "output": [
            {"name": "anomaly_map", "data_type": "TYPE_FP32", "dims": [input_size, input_size]},
            {"name": "image_score", "data_type": "TYPE_FP32", **per_image},
            {"name": "label", "data_type": "TYPE_INT64", **per_image},
        ],
        "dynamic_batching": batching,
        "instance_group": [{"count": instance_count, "kind": INSTANCE_KINDS[instance_kind]}],
    }
    if parameters:
        config["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return config


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if key in _ENUM_KEYS:
        return str(value)
    return json.dumps(str(value))  # a JSON string literal is a valid protobuf text string


def _lines(key: str, value: Any, indent: str) -> list[str]:
    """Protobuf text format of one field (lists of messages in Triton's ``[ {...} ]`` style)."""
    inner = indent + "  "
    if key == "parameters" and isinstance(value, dict):
        # A map field is written as repeated {key, value} entries.
        out = []
        for name, entry in value.items():
            out.append(f"{indent}parameters {{")
            out.append(f"{inner}key: {json.dumps(name)}")
            out += _lines("value", entry, inner)
            out.append(f"{indent}}}")
        return out
    if isinstance(value, dict):
        out = [f"{indent}{key} {{"]
        for sub_key, sub_value in value.items():
            out += _lines(sub_key, sub_value, inner)
        return [*out, f"{indent}}}"]
    if isinstance(value, list) and value and isinstance(value[0], dict):
        out = [f"{indent}{key} ["]
        for i, item in enumerate(value):
            block = _lines("", item, inner)
            block[0] = f"{inner}{{"
            if i < len(value) - 1:
                block[-1] += ","
            out += block
        return [*out, f"{indent}]"]
    if isinstance(value, list):
        items = ", ".join(_scalar(key, v) for v in value)
        return [f"{indent}{key}: [ {items} ]" if items else f"{indent}{key}: [ ]"]
    return [f"{indent}{key}: {_scalar(key, value)}"]


def to_pbtxt(config: dict[str, Any]) -> str:
    """Render a :func:`triton_config` dict as ``config.pbtxt`` text."""
    lines: list[str] = []
    for key, value in config.items():
        lines += _lines(key, value, "")
    return "\n".join(lines) + "\n"


def write_triton_repository(
    onnx_path: str | Path,
    repo_dir: str | Path,
    *,
    name: str | None = None,
    version: int = 1,
    backend: str = "onnxruntime",
    max_batch_size: int = 32,
    instance_kind: str = "cpu",
    instance_count: int = 1,
    max_queue_delay_us: int = 2000,
) -> Path:
    """Write ``<repo_dir>/<name>/config.pbtxt`` and ``<repo_dir>/<name>/<version>/model.onnx``.

    With ``backend="python"`` the version folder also gets the python-backend ``model.py``.

    Args:
        onnx_path: An ONNX file written by :func:`noisyad.export.export_onnx`.
        repo_dir: The model repository (created if needed; other models are left alone).
        name: Model name; default the ONNX metadata's category, else the file stem.
        version: Version folder number.
        backend: ``onnxruntime`` or ``python``.
        max_batch_size: See :func:`triton_config`.
        instance_kind: See :func:`triton_config`.
        instance_count: See :func:`triton_config`.
        max_queue_delay_us: See :func:`triton_config`.

    Returns:
        The model folder.
    """
    onnx_path = Path(onnx_path)
    metadata = read_metadata(onnx_path)
    if "noisyad.input_size" not in metadata:
        raise ValueError(f"{onnx_path} is not a noisyad export (no noisyad.input_size metadata)")
    category = metadata.get("noisyad.category")
    name = name or (category if category not in (None, "", "None") else onnx_path.stem)
    config = triton_config(
        name,
        int(metadata["noisyad.input_size"]),
        backend=backend,
        max_batch_size=max_batch_size,
        instance_kind=instance_kind,
        instance_count=instance_count,
        max_queue_delay_us=max_queue_delay_us,
        parameters={k: metadata[k] for k in CARRIED_METADATA if k in metadata},
    )
    model_dir = Path(repo_dir) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(config))
    shutil.copyfile(onnx_path, version_dir / "model.onnx")
    if backend == "python":
        shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")
    logger.info(
        "Triton model %s (%s backend, %s, max batch %d) written to %s",
        name,
        backend,
        instance_kind,
        max_batch_size,
        model_dir,
    )
    return model_dir
