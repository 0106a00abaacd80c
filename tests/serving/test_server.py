"""``noisyad serve`` seen through tritonclient.http, the way a production line calls it.

Health, metadata and inference in both binary and JSON modes; the scores must equal the ONNX
file run directly. Also the upload endpoint (resized exactly as in training) and /metrics.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image

from noisyad.data import read_image

OUTPUTS = ("anomaly_map", "image_score", "label")


@pytest.fixture()
def client(server):
    triton = httpclient.InferenceServerClient(server.url)
    yield triton
    triton.close()


def test_health_and_metadata(client, server) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("brick")
    assert client.is_model_ready("brick", model_version="1")
    assert not client.is_model_ready("nope")

    server_meta = client.get_server_metadata()
    assert server_meta["name"] == "noisyad"
    assert "binary_tensor_data" in server_meta["extensions"]

    meta = client.get_model_metadata("brick")
    assert meta["name"] == "brick" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 128, 128, 3]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("anomaly_map", "FP32", [-1, 128, 128]),
        ("image_score", "FP32", [-1, 1]),
        ("label", "INT64", [-1, 1]),
    ]
    config = client.get_model_config("brick")
    assert config["max_batch_size"] == 8
    assert config["parameters"]["noisyad.input_size"]["string_value"] == "128"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_the_onnx_file(client, images, direct, binary: bool) -> None:
    tensor = httpclient.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]

    result = client.infer("brick", [tensor], outputs=wanted, request_id="line-7")

    assert result.get_response()["id"] == "line-7"
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("image_score")[:, 0], direct["image_score"])
    np.testing.assert_array_equal(result.as_numpy("label")[:, 0], direct["label"])
    np.testing.assert_array_equal(result.as_numpy("anomaly_map"), direct["anomaly_map"])


def test_infer_defaults_versions_and_compression(client, images, direct) -> None:
    """tritonclient's defaults (binary, all outputs), a version path, gzip both ways."""
    tensor = httpclient.InferInput("image", [1, 128, 128, 3], "UINT8")
    tensor.set_data_from_numpy(images[:1])

    result = client.infer(
        "brick",
        [tensor],
        model_version="1",
        request_compression_algorithm="gzip",
    )
    assert result.as_numpy("image_score")[0, 0] == direct["image_score"][0]
    assert result.as_numpy("anomaly_map").shape == (1, 128, 128)


def test_concurrent_requests_are_batched(server, images, direct) -> None:
    """Requests from several clients at once come back right (and get merged: metrics)."""
    import concurrent.futures

    def one(i: int) -> float:
        triton = httpclient.InferenceServerClient(server.url)
        tensor = httpclient.InferInput("image", [1, 128, 128, 3], "UINT8")
        tensor.set_data_from_numpy(images[i : i + 1])
        try:
            return float(triton.infer("brick", [tensor]).as_numpy("image_score")[0, 0])
        finally:
            triton.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(one, [0, 1, 2, 3] * 3))
    np.testing.assert_array_equal(scores, np.tile(direct["image_score"], 3))

    text = httpx.get(f"{server.base}/metrics").text
    assert "noisyad_batch_size_count" in text
    assert 'noisyad_requests_total{endpoint="/v2/models/{model_name}/infer",status="200"}' in text


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_is_resized_as_in_training(server, onnx_path: Path, tmp_path: Path) -> None:
    """A 300x200 RGBA PNG scores exactly like the same file decoded by read_image."""
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 256, (200, 300, 4), dtype=np.uint8), mode="RGBA")
    path = tmp_path / "odd.png"
    picture.save(path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(["image_score", "label"], {"image": read_image(path, 128)[None]})

    response = httpx.post(
        f"{server.base}/predict",
        params={"anomaly_map": "true"},
        files={"file": ("odd.png", path.read_bytes(), "image/png")},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_score"] == float(expected[0][0])
    assert body["label"] == int(expected[1][0])
    assert body["model_name"] == "brick" and body["model_version"] == "1"
    assert body["threshold"] > 0
    heat = Image.open(io.BytesIO(base64.b64decode(body["anomaly_map_png"])))
    assert (heat.size, heat.mode) == ((128, 128), "L")


def test_upload_as_raw_body_jpeg_and_grey(server) -> None:
    grey = Image.fromarray(np.full((64, 90), 120, np.uint8), mode="L")
    buffer = io.BytesIO()
    grey.convert("RGB").save(buffer, format="JPEG")
    for payload in (_png(grey), buffer.getvalue()):
        response = httpx.post(f"{server.base}/predict", content=payload)
        assert response.status_code == 200, response.text
        assert set(response.json()) >= {"image_score", "label", "threshold", "model_version"}
        assert "anomaly_map_png" not in response.json()


def test_gzip_upload_of_raw_json(server, images, direct) -> None:
    """A hand-written JSON request, gzip-compressed, through plain HTTP."""
    request = {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": [1, 128, 128, 3],
                "data": images[:1].ravel().tolist(),
            }
        ],
        "outputs": [{"name": "image_score"}],
    }
    response = httpx.post(
        f"{server.base}/v2/models/brick/infer",
        content=gzip.compress(json.dumps(request).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["shape"] == [1, 1]
    assert np.float32(output["data"][0]) == direct["image_score"][0]
