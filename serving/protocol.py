"""The KServe v2 / Open Inference Protocol codec, with Triton's binary tensor extension.

A v2 inference request is a JSON object::

    {"id": "42",
     "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 128, 128, 3],
                 "data": [...]}],                        # row-major, flat or nested
     "outputs": [{"name": "image_score"}],               # optional: which outputs to return
     "parameters": {"binary_data_output": true}}         # optional

Triton's binary tensor extension (what ``tritonclient.http`` sends by default) moves the
tensor bytes out of the JSON: an input carries ``"parameters": {"binary_data_size": N}``
instead of ``data``, the HTTP body is the JSON header followed by the raw little-endian bytes
of each such input in the order the inputs are listed, and the header
``Inference-Header-Content-Length`` says where the JSON ends. Responses use the same layout
for outputs requested with ``binary_data`` (or all of them with ``binary_data_output``).

Errors are answered as ``{"error": "<message>"}``, the body ``tritonclient`` reads.

Example:
    >>> request = parse_infer_request(body, headers.get(HEADER_LENGTH))   # doctest: +SKIP
    >>> body, headers = encode_infer_response("brick", "1", request, outputs)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: HTTP header that splits a binary request or response into JSON header and tensor bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: v2 datatype names and their numpy types. BYTES (strings) is not a tensor this service uses.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}


class ProtocolError(Exception):
    """A request that breaks the protocol or the model's contract; answered with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class TensorHeader:
    """One input as the JSON header describes it, before its data are turned into an array."""

    name: str
    datatype: str
    shape: list[int]
    data: Any = None
    binary_size: int | None = None
    binary: bytes | memoryview | None = None

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def to_array(self) -> np.ndarray:
        """The tensor as a numpy array of ``shape`` (raises :class:`ProtocolError`)."""
        if self.binary is not None:
            flat = np.frombuffer(self.binary, dtype=self.dtype.newbyteorder("<"))
            return flat.astype(self.dtype, copy=False).reshape(self.shape)
        return _json_array(self)


@dataclass
class InferRequest:
    """A decoded inference request."""

    inputs: list[TensorHeader]
    id: str | None = None
    outputs: list[dict[str, Any]] | None = None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def _json_array(tensor: TensorHeader) -> np.ndarray:
    """Turn JSON ``data`` (flat or nested, row-major) into an array, checking count and range."""
    try:
        values = np.asarray(tensor.data)
    except ValueError as exc:
        raise ProtocolError(f"input '{tensor.name}': data is not a regular array ({exc})") from None
    if values.size != tensor.count:
        raise ProtocolError(
            f"input '{tensor.name}': shape {tensor.shape} needs {tensor.count} values "
            f"but data holds {values.size}"
        )
    dtype = tensor.dtype
    if values.size and values.dtype.kind not in "biuf":
        raise ProtocolError(
            f"input '{tensor.name}': data must be numbers for datatype {tensor.datatype}"
        )
    if dtype.kind in "iu" and values.size:
        if values.dtype.kind == "f" and not np.all(np.equal(np.mod(values, 1), 0)):
            raise ProtocolError(
                f"input '{tensor.name}': {tensor.datatype} data must be whole numbers"
            )
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise ProtocolError(
                f"input '{tensor.name}': values must lie in {info.min}..{info.max} "
                f"for datatype {tensor.datatype}"
            )
    return values.astype(dtype).reshape(tensor.shape)


def _tensor_header(entry: Any, index: int) -> TensorHeader:
    """Validate the JSON description of one input."""
    if not isinstance(entry, dict):
        raise ProtocolError(f"inputs[{index}] must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"inputs[{index}] needs a 'name' string")
    datatype = entry.get("datatype")
    if datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise ProtocolError(
            f"input '{name}': unsupported datatype {datatype!r}; one of {known} is expected"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"input '{name}': 'shape' must be a list of non-negative integers")
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"input '{name}': 'parameters' must be an object")
    tensor = TensorHeader(name=name, datatype=datatype, shape=shape)
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in entry:
            raise ProtocolError(f"input '{name}': give either 'data' or binary_data_size, not both")
        tensor.binary_size = size
    elif "data" not in entry:
        raise ProtocolError(f"input '{name}': no 'data' and no binary_data_size parameter")
    else:
        tensor.data = entry["data"]
    return tensor


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """Split the body into the JSON header and the binary tail the header length points at."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(
            f"{HEADER_LENGTH} must be an integer byte count, got {header_length!r}"
        ) from None
    if length < 0 or length > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {length} but the request body has {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode a v2 inference request (JSON only, or JSON header + binary tensors).

    Args:
        body: The HTTP request body.
        header_length: The ``Inference-Header-Content-Length`` header, if sent.

    Returns:
        The request; input data stay raw until :meth:`TensorHeader.to_array`.

    Raises:
        ProtocolError: On malformed JSON, missing fields, or binary sizes that do not add up.
    """
    head, tail = _split_body(body, header_length)
    try:
        document = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        hint = "" if header_length else f" (binary tensors need the {HEADER_LENGTH} header)"
        raise ProtocolError(f"the request header is not valid JSON: {exc}{hint}") from None
    if not isinstance(document, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    entries = document.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    inputs = [_tensor_header(entry, i) for i, entry in enumerate(entries)]
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise ProtocolError(f"input names must be unique, got {names}")

    # The binary tail holds the inputs' bytes back to back, in the order the inputs are listed.
    offset = 0
    for tensor in inputs:
        if tensor.binary_size is None:
            continue
        needed = tensor.count * tensor.dtype.itemsize
        if tensor.binary_size != needed:
            raise ProtocolError(
                f"input '{tensor.name}': binary_data_size is {tensor.binary_size} bytes but "
                f"shape {tensor.shape} of {tensor.datatype} needs {needed} bytes"
            )
        tensor.binary = tail[offset : offset + needed]
        offset += needed
    if offset != len(tail):
        raise ProtocolError(
            f"the inputs declare {offset} bytes of binary data after the JSON header "
            f"({HEADER_LENGTH} {len(head)}) but the body carries {len(tail)}"
        )

    parameters = document.get("parameters") or {}
    outputs = document.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list)
        or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    ):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    request_id = document.get("id")
    return InferRequest(
        inputs=inputs,
        id=None if request_id is None else str(request_id),
        outputs=outputs,
        binary_output=bool(isinstance(parameters, dict) and parameters.get("binary_data_output")),
        parameters=parameters if isinstance(parameters, dict) else {},
    )


def selected_outputs(request: InferRequest, available: list[str]) -> list[tuple[str, bool]]:
    """The outputs to return, each with whether it goes as binary data.

    With no ``outputs`` list every output is returned; ``binary_data_output`` sets the default
    and a requested output's own ``binary_data`` parameter overrides it.

    Raises:
        ProtocolError: For an unknown output or the unsupported classification extension.
    """
    if request.outputs is None:
        return [(name, request.binary_output) for name in available]
    chosen = []
    for entry in request.outputs:
        name = entry["name"]
        if name not in available:
            raise ProtocolError(f"unknown output '{name}'; the model's outputs are {available}")
        parameters = entry.get("parameters") or {}
        if parameters.get("classification"):
            raise ProtocolError(f"output '{name}': the classification extension is not supported")
        chosen.append((name, bool(parameters.get("binary_data", request.binary_output))))
    return chosen


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, dict[str, str]]:
    """Encode outputs as a v2 response, binary where the request asked for it.

    Args:
        model_name: Name echoed in the response.
        model_version: Version echoed in the response.
        request: The request (its ``id`` and output selection are honoured).
        outputs: Every output of the model by name, in the model's order.

    Returns:
        The body and the headers to send (``Inference-Header-Content-Length`` when any
        output is binary).
    """
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        header["id"] = request.id
    entries, blobs = [], []
    for name, binary in selected_outputs(request, list(outputs)):
        array = np.ascontiguousarray(outputs[name])
        entry = {"name": name, "datatype": DATATYPE_OF[array.dtype], "shape": list(array.shape)}
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    header["outputs"] = entries

    head = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return b"".join([head, *blobs]), headers
