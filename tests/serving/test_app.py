"""In-process tests of serving.app: bearer-token auth, limits, and a loop that never blocks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient

from serving.app import ServeSettings, create_app

TOKEN = "s3cret-token"


def _infer_body(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    tensor = httpclient.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    body, length = httpclient.InferenceServerClient.generate_request_body([tensor])
    return body, {"Inference-Header-Content-Length": str(length)}


@pytest.fixture()
def secured(served_model):
    with TestClient(create_app(served_model, ServeSettings(token=TOKEN))) as client:
        yield client


def test_probes_and_metrics_stay_open_with_a_token(secured) -> None:
    assert secured.get("/v2/health/live").status_code == 200
    assert secured.get("/v2/health/ready").status_code == 200
    assert secured.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "the Authorization header is not a bearer token"),
        ("Bearer wrong", "invalid bearer token"),
    ],
    ids=["missing", "basic", "wrong"],
)
def test_token_is_required(secured, images, direct, authorization, message: str) -> None:
    body, headers = _infer_body(images[:1])
    if authorization:
        headers["Authorization"] = authorization

    for response in (
        secured.get("/v2", headers=headers),
        secured.get("/v2/models/brick", headers=headers),
        secured.post("/v2/models/brick/infer", content=body, headers=headers),
        secured.post("/predict", content=b"x", headers=headers),
    ):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert message in response.json()["error"]

    headers["Authorization"] = f"Bearer {TOKEN}"
    response = secured.post("/v2/models/brick/infer", content=body, headers=headers)
    assert response.status_code == 200
    length = int(response.headers["Inference-Header-Content-Length"])
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=length
    )
    assert result.as_numpy("image_score")[0, 0] == direct["image_score"][0]


def test_small_body_limit_and_unsupported_encoding(served_model, images) -> None:
    settings = ServeSettings(max_body_bytes=10_000)
    body, headers = _infer_body(images[:1])
    with TestClient(create_app(served_model, settings)) as client:
        response = client.post("/v2/models/brick/infer", content=body, headers=headers)
        assert response.status_code == 413
        assert "exceeds the limit of 10000 bytes" in response.json()["error"]

        headers["Content-Encoding"] = "br"
        response = client.post("/v2/models/brick/infer", content=b"{}", headers=headers)
        assert response.status_code == 415
        assert "unsupported Content-Encoding 'br'" in response.json()["error"]


class SlowSession:
    """Stands in for ONNX Runtime: takes 0.5 s per batch, like a big model would."""

    def __init__(self, size: int) -> None:
        self.size = size

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, names, feeds):
        time.sleep(0.5)
        n = len(feeds["image"])
        return [
            np.zeros((n, self.size, self.size), np.float32),
            np.ones(n, np.float32),
            np.zeros(n, np.int64),
        ]


def test_inference_never_blocks_the_event_loop(served_model, images) -> None:
    """While a 0.5 s inference runs, health and metadata answer within a fraction of it."""
    model = replace(served_model, session=SlowSession(served_model.input_size))
    app = create_app(model)
    body, headers = _infer_body(images[:2])

    async def scenario() -> tuple[float, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            infer = asyncio.create_task(
                client.post("/v2/models/brick/infer", content=body, headers=headers)
            )
            await asyncio.sleep(0.1)  # the batch is now computing on its worker thread
            started = time.perf_counter()
            ready = await client.get("/v2/health/ready")
            meta = await client.get("/v2/models/brick")
            elapsed = time.perf_counter() - started
            assert ready.status_code == meta.status_code == 200
            assert not infer.done()
            response = await infer
            await app.state.batcher.stop()
            return elapsed, response.status_code

    elapsed, status = asyncio.run(scenario())
    assert status == 200
    assert elapsed < 0.2
