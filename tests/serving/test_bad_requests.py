"""Bad requests get a 4xx that names what was wrong, and the server stays up.

Each case sends one bad request to the running ``noisyad serve`` (max batch 8, 4 MB body
limit), checks the status and the message, then sends a good request that must still succeed.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MAX_BATCH = 8  # the session server's --max-batch-size (tests/serving/conftest.py)


@pytest.fixture()
def client(server):
    triton = httpclient.InferenceServerClient(server.url)
    yield triton
    triton.close()


@pytest.fixture()
def good(server, images, direct):
    """A good request after the bad one: the server still answers it correctly."""

    def check() -> None:
        triton = httpclient.InferenceServerClient(server.url)
        try:
            tensor = httpclient.InferInput("image", [1, 128, 128, 3], "UINT8")
            tensor.set_data_from_numpy(images[:1])
            score = triton.infer("brick", [tensor]).as_numpy("image_score")[0, 0]
        finally:
            triton.close()
        assert score == direct["image_score"][0]

    return check


def _tritonclient_error(client, model: str, array: np.ndarray, name="image", datatype="UINT8"):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor])
    return int(caught.value.status()), caught.value.message()


TRITONCLIENT_CASES = {
    "wrong input name": (
        dict(name="picture"),
        400,
        "unknown input 'picture' for model 'brick'; the model takes one input 'image' "
        "(UINT8, shape [-1, 128, 128, 3])",
    ),
    "wrong datatype": (
        dict(datatype="FP32", array=np.zeros((1, 128, 128, 3), np.float32)),
        400,
        "input 'image' has datatype FP32 but model 'brick' expects UINT8",
    ),
    "wrong shape": (
        dict(array=np.zeros((1, 64, 64, 3), np.uint8)),
        400,
        "input 'image' has shape [1, 64, 64, 3] but model 'brick' expects [-1, 128, 128, 3]",
    ),
    "batch over the maximum": (
        dict(array=np.zeros((MAX_BATCH + 1, 128, 128, 3), np.uint8)),
        400,
        f"batch size {MAX_BATCH + 1} exceeds the maximum batch size {MAX_BATCH} of model 'brick'",
    ),
    "unknown model": (
        dict(model="nope"),
        404,
        "unknown model 'nope'; this server serves 'brick'",
    ),
}


@pytest.mark.parametrize("case", list(TRITONCLIENT_CASES))
def test_tritonclient_bad_requests(client, server, good, case: str) -> None:
    assert server.max_batch_size == MAX_BATCH
    overrides, status, message = TRITONCLIENT_CASES[case]
    args = {"model": "brick", "array": np.zeros((1, 128, 128, 3), np.uint8), **overrides}

    got_status, got_message = _tritonclient_error(client, **args)

    assert got_status == status
    assert message in got_message
    good()


def _binary_request(server, body: bytes, header_length: str) -> httpx.Response:
    return httpx.post(
        f"{server.base}/v2/models/brick/infer",
        content=body,
        headers={"Inference-Header-Content-Length": header_length},
    )


def _binary_body(array: np.ndarray) -> tuple[bytes, int]:
    tensor = httpclient.InferInput("image", list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array)
    body, length = httpclient.InferenceServerClient.generate_request_body([tensor])
    return body, length


def test_binary_header_longer_than_the_body(server, good) -> None:
    body, _ = _binary_body(np.zeros((1, 128, 128, 3), np.uint8))
    response = _binary_request(server, body, str(len(body) + 10))
    assert response.status_code == 400
    assert (
        f"Inference-Header-Content-Length is {len(body) + 10} but the request body has "
        in (response.json()["error"])
    )
    good()


def test_binary_data_shorter_than_declared(server, good) -> None:
    body, length = _binary_body(np.zeros((1, 128, 128, 3), np.uint8))
    response = _binary_request(server, body[:-100], str(length))
    assert response.status_code == 400
    assert (
        "the inputs declare 49152 bytes of binary data after the JSON header"
        in (response.json()["error"])
    )
    assert "the body carries 49052" in response.json()["error"]
    good()


def test_binary_header_length_cuts_the_json(server, good) -> None:
    body, length = _binary_body(np.zeros((1, 128, 128, 3), np.uint8))
    response = _binary_request(server, body, str(length - 5))
    assert response.status_code == 400
    assert "the request header is not valid JSON" in response.json()["error"]
    good()


def test_body_over_the_size_limit(server, good) -> None:
    limit = server.max_body_bytes
    response = httpx.post(
        f"{server.base}/v2/models/brick/infer",
        content=b"\0" * (limit + 1),
        headers={"Inference-Header-Content-Length": "10"},
    )
    assert response.status_code == 413
    assert (
        f"request body of {limit + 1} bytes exceeds the limit of {limit} bytes"
        in (response.json()["error"])
    )
    good()


def test_chunked_body_over_the_size_limit(server, good) -> None:
    """Without Content-Length the limit is enforced while the body streams in."""
    limit = server.max_body_bytes

    def chunks():
        for _ in range(limit // (1 << 20) + 2):
            yield b"\0" * (1 << 20)

    try:
        response = httpx.post(f"{server.base}/predict", content=chunks())
    except httpx.TransportError:  # the server may close before the client finished sending
        pytest.skip("connection closed before the 413 could be read")
    assert response.status_code == 413
    assert f"exceeds the limit of {limit} bytes" in response.json()["error"]
    good()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"this is not an image", "could not decode the uploaded image 'broken.png'"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "could not decode the uploaded image 'broken.png'"),
        (b"", "empty upload"),
    ],
    ids=["text", "truncated-png", "empty"],
)
def test_undecodable_upload(server, good, payload: bytes, message: str) -> None:
    response = httpx.post(
        f"{server.base}/predict", files={"file": ("broken.png", payload, "image/png")}
    )
    assert response.status_code == 400
    assert message in response.json()["error"]
    good()


def test_upload_without_a_file_field(server, good) -> None:
    response = httpx.post(f"{server.base}/predict", files={"other": ("a.png", b"x", "image/png")})
    assert response.status_code == 400
    assert "a file field named 'file'" in response.json()["error"]
    good()


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/brick/versions/7/infer", 404, "model 'brick' has no version '7'"),
        ("/v2/models/nope/infer", 404, "unknown model 'nope'"),
        ("/v2/nowhere", 404, "GET /v2/nowhere: Not Found"),
    ],
)
def test_unknown_model_version_and_route(server, good, path: str, status: int, message) -> None:
    method = httpx.get if path == "/v2/nowhere" else httpx.post
    kwargs = {} if method is httpx.get else {"content": b"{}"}
    response = method(f"{server.base}{path}", **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]
    good()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "the request header is not valid JSON"),
        (
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 128, 128, 3]}]},
            "input 'image': no 'data' and no binary_data_size parameter",
        ),
        (
            {
                "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2], "data": [1]}],
            },
            "input 'image' has shape [1, 2] but model 'brick' expects",
        ),
        (
            {
                "inputs": [
                    {"name": "image", "datatype": "UINT8", "shape": [1, 128, 128, 3], "data": [1]}
                ],
            },
            "input 'image': shape [1, 128, 128, 3] needs 49152 values but data holds 1",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [1, 128, 128, 3],
                        "data": [0] * 49152,
                    }
                ],
                "outputs": [{"name": "heatmap"}],
            },
            "unknown output 'heatmap'",
        ),
    ],
    ids=["invalid-json", "no-data", "json-shape", "json-count", "unknown-output"],
)
def test_bad_json_requests(server, good, document, message: str) -> None:
    body = document if isinstance(document, str) else json.dumps(document)
    response = httpx.post(f"{server.base}/v2/models/brick/infer", content=body.encode())
    assert response.status_code == 400
    assert message in response.json()["error"]
    good()


def test_metrics_count_the_errors(server) -> None:
    httpx.post(f"{server.base}/v2/models/nope/infer", content=b"{}")
    text = httpx.get(f"{server.base}/metrics").text
    assert (
        'noisyad_request_errors_total{endpoint="/v2/models/{model_name}/infer",status="404"}'
        in (text)
    )
