"""Tests for serving.protocol: the v2 codec against bodies tritonclient itself builds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient

from serving.protocol import (
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
    selected_outputs,
)

Client = httpclient.InferenceServerClient


def _request(array: np.ndarray, binary: bool, datatype: str = "UINT8", **kwargs):
    tensor = httpclient.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, header_length = Client.generate_request_body([tensor], **kwargs)
    return body, None if header_length is None else str(header_length)


@pytest.mark.parametrize("binary", [True, False])
def test_decodes_tritonclient_requests(binary: bool) -> None:
    array = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    body, header_length = _request(array, binary, request_id="r1")

    request = parse_infer_request(body, header_length)

    assert request.id == "r1"
    assert [t.name for t in request.inputs] == ["image"]
    decoded = request.inputs[0].to_array()
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, array)


def test_nested_json_data_is_accepted() -> None:
    array = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2, 3], "data": array.tolist()}]}
    ).encode()
    np.testing.assert_array_equal(parse_infer_request(body).inputs[0].to_array(), array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2, 3], "needs 4 values but data holds 3"),
        ([1, 2, 3, 256], "values must lie in 0..255"),
        ([1, 2, 3, 1.5], "must be whole numbers"),
        (["a", "b", "c", "d"], "data must be numbers"),
    ],
)
def test_bad_json_data_names_the_problem(data: list, message: str) -> None:
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 4], "data": data}]}
    ).encode()
    request = parse_infer_request(body)
    with pytest.raises(ProtocolError, match=message):
        request.inputs[0].to_array()


@pytest.mark.parametrize(
    ("header_length", "cut", "message"),
    [
        ("abc", 0, "must be an integer"),
        ("999999", 0, "but the request body has"),
        (None, 10, "the body carries"),  # header length right, tensor bytes cut short
    ],
)
def test_inconsistent_binary_framing(header_length, cut: int, message: str) -> None:
    body, real_length = _request(np.zeros((1, 4, 4, 3), np.uint8), binary=True)
    body = body[: len(body) - cut] if cut else body
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(body, header_length or real_length)


def test_binary_size_must_match_shape() -> None:
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": [1, 4],
                "parameters": {"binary_data_size": 3},
            }
        ]
    }
    head = json.dumps(header).encode()
    with pytest.raises(ProtocolError, match="binary_data_size is 3 bytes but shape"):
        parse_infer_request(head + b"abc", str(len(head)))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "not valid JSON"),
        ([], "must be a JSON object"),
        ({"inputs": []}, "non-empty 'inputs'"),
        ({"inputs": [{"name": "x", "datatype": "FOO", "shape": [1]}]}, "unsupported datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]}, "non-negative"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "no 'data'"),
    ],
)
def test_malformed_headers(document, message: str) -> None:
    body = document.encode() if isinstance(document, str) else json.dumps(document).encode()
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(body)


def _outputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "anomaly_map": rng.random((2, 4, 4), dtype=np.float32),
        "image_score": rng.random((2, 1), dtype=np.float32),
        "label": np.array([[0], [1]], dtype=np.int64),
    }


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trips_through_tritonclient(binary: bool) -> None:
    outputs = _outputs()
    requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    body, header_length = _request(
        np.zeros((2, 4, 4, 3), np.uint8), True, outputs=requested, request_id="9"
    )
    request = parse_infer_request(body, header_length)

    payload, headers = encode_infer_response("brick", "3", request, outputs)

    length = headers.get("Inference-Header-Content-Length")
    assert (length is not None) == binary
    result = Client.parse_response_body(
        payload, header_length=None if length is None else int(length)
    )
    assert result.get_response()["model_version"] == "3"
    assert result.get_response()["id"] == "9"
    for name, value in outputs.items():
        got = result.as_numpy(name)
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)


def test_output_selection() -> None:
    body, header_length = _request(
        np.zeros((1, 2, 2, 3), np.uint8),
        True,
        outputs=[httpclient.InferRequestedOutput("image_score", binary_data=False)],
    )
    request = parse_infer_request(body, header_length)
    assert selected_outputs(request, list(_outputs())) == [("image_score", False)]

    request.outputs = [{"name": "heatmap"}]
    with pytest.raises(ProtocolError, match="unknown output 'heatmap'"):
        selected_outputs(request, list(_outputs()))
