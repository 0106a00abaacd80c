"""The inference service: KServe v2 / Triton HTTP protocol plus an image-upload endpoint.

Endpoints (``{name}`` is the served model; every ``/v2/models/{name}`` route also exists as
``/v2/models/{name}/versions/{version}``, as in Triton):

=========================================  ==================================================
``GET  /v2/health/live``, ``/v2/health/ready``  server liveness / readiness (200 or 503)
``GET  /v2``                                server metadata (name, version, extensions)
``GET  /v2/models/{name}``                  model metadata (inputs, outputs, versions)
``GET  /v2/models/{name}/ready``            model readiness
``GET  /v2/models/{name}/config``           the Triton model configuration, as JSON
``POST /v2/models/{name}/infer``            inference, JSON or binary tensors
``POST /predict``                           upload a PNG/JPEG, get score, label (and map)
``GET  /metrics``                           Prometheus metrics
=========================================  ==================================================

Every request is decoded, batched and answered without blocking the event loop: inference
runs on the batcher's threads, and decoding or encoding that takes more than microseconds
(JSON tensors, compressed bodies) on worker threads. Errors are answered as
``{"error": "<message>"}`` with a 4xx status that says what was wrong; the server stays up.

Example:
    >>> app = create_app(load_model("brick.onnx"), ServeSettings())     # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                    # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException

from noisyad.data import ImageLoadError, read_image
from serving.batcher import DynamicBatcher
from serving.guards import BodyLimitMiddleware, decompress, require_token
from serving.metrics import CONTENT_TYPE, MetricsMiddleware, ServiceMetrics
from serving.model import ServedModel
from serving.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
    selected_outputs,
)
from serving.triton import CARRIED_METADATA, triton_config

logger = logging.getLogger(__name__)

# Limitation: only the HTTP/REST binding of the v2 protocol is served; tritonclient.grpc
# clients need Triton itself (a gRPC server on the same batcher would lift this).
SERVER_NAME = "noisyad"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
UPLOAD_FIELDS = ("file", "image")
#: A binary request whose JSON header is at most this long is decoded on the event loop.
CHEAP_HEADER_BYTES = 16 << 10


@dataclass
class ServeSettings:
    """Service settings (the model's own settings live on :class:`ServedModel`).

    Attributes:
        max_delay_ms: How long the oldest queued request waits for a fuller batch.
        instances: Batches computed at the same time.
        token: Bearer token required on every endpoint but health and metrics; None = open.
        max_body_bytes: Largest request body (also after decompression).
    """

    max_delay_ms: float = 2.0
    instances: int = 1
    token: str | None = None
    max_body_bytes: int = 64 << 20


def _model_for(request: Request, name: str, version: str | None) -> ServedModel:
    """The served model if ``name`` (and ``version``) match it, else a 404."""
    model: ServedModel = request.app.state.model
    if name != model.name:
        raise ProtocolError(
            f"unknown model '{name}'; this server serves '{model.name}' (GET /v2/models/"
            f"{model.name})",
            status=404,
        )
    if version not in (None, "", model.version):
        raise ProtocolError(
            f"model '{name}' has no version '{version}'; it serves version '{model.version}'",
            status=404,
        )
    return model


async def _infer(request: Request, name: str, version: str | None) -> Response:
    model = _model_for(request, name, version)
    limit = request.app.state.settings.max_body_bytes
    body = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    encoding = request.headers.get("content-encoding")

    def decode() -> tuple[InferRequest, np.ndarray]:
        raw = decompress(body, encoding, limit)
        parsed = parse_infer_request(raw, header_length)
        image = model.check_inputs(parsed.inputs)
        selected_outputs(parsed, [spec.name for spec in model.outputs])  # unknown names: 400
        return parsed, np.ascontiguousarray(image.to_array())

    # A binary request with a small JSON header decodes in microseconds (the tensor bytes are
    # only viewed); JSON tensors, compressed bodies and JSON outputs go to a worker thread.
    if _is_cheap(header_length, encoding):
        parsed, images = decode()
    else:
        parsed, images = await to_thread.run_sync(decode)
    outputs = await _score(request, images)
    args = (model.name, model.version, parsed, outputs)
    if all(binary for _, binary in selected_outputs(parsed, list(outputs))):
        payload, headers = encode_infer_response(*args)  # bytes copied, nothing formatted
    else:
        payload, headers = await to_thread.run_sync(encode_infer_response, *args)
    return Response(payload, headers=headers)


def _is_cheap(header_length: str | None, encoding: str | None) -> bool:
    """Whether decoding happens fast enough to stay on the event loop."""
    if encoding or header_length is None or not header_length.isdigit():
        return False
    return int(header_length) <= CHEAP_HEADER_BYTES


async def _score(request: Request, images: np.ndarray) -> dict[str, np.ndarray]:
    """Queue images on the dynamic batcher; an inference failure becomes a 500."""
    try:
        return await request.app.state.batcher.submit(images)
    except Exception as exc:
        raise ProtocolError(f"inference failed: {type(exc).__name__}: {exc}", 500) from exc


def _model_metadata(model: ServedModel) -> dict:
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [spec.as_v2() for spec in model.inputs],
        "outputs": [spec.as_v2() for spec in model.outputs],
    }


def _model_config(request: Request, model: ServedModel) -> dict:
    settings: ServeSettings = request.app.state.settings
    return triton_config(
        model.name,
        model.input_size,
        max_batch_size=model.max_batch_size,
        instance_kind="gpu" if "CUDAExecutionProvider" in model.providers else "cpu",
        instance_count=settings.instances,
        max_queue_delay_us=int(settings.max_delay_ms * 1000),
        parameters={k: model.metadata[k] for k in CARRIED_METADATA if k in model.metadata},
    )


def _v2_model_routes() -> APIRouter:
    """The per-model routes, mounted with and without ``/versions/{model_version}``."""
    router = APIRouter()

    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):

        @router.get(prefix)
        async def model_metadata(request: Request, model_name: str, model_version: str = ""):
            return _model_metadata(_model_for(request, model_name, model_version))

        @router.get(prefix + "/ready")
        async def model_ready(request: Request, model_name: str, model_version: str = ""):
            _model_for(request, model_name, model_version)
            return Response(status_code=200)

        @router.get(prefix + "/config")
        async def model_config(request: Request, model_name: str, model_version: str = ""):
            return _model_config(request, _model_for(request, model_name, model_version))

        @router.post(prefix + "/infer")
        async def infer(request: Request, model_name: str, model_version: str = ""):
            return await _infer(request, model_name, model_version)

    return router


def _decode_upload(data: bytes, filename: str, size: int) -> np.ndarray:
    """Decode uploaded bytes exactly as training does: through ``read_image`` on a file."""
    # Limitation: read_image only reads paths, so an upload takes a trip through a temporary
    # file; a bytes-accepting read_image in noisyad.data would save that disk write.
    suffix = Path(filename).suffix if filename else ""
    with tempfile.NamedTemporaryFile(suffix=suffix[:16]) as handle:
        handle.write(data)
        handle.flush()
        try:
            return read_image(handle.name, size)
        except ImageLoadError as exc:
            raise ProtocolError(
                f"could not decode the uploaded image '{filename}': {exc.reason}; "
                f"send a PNG or JPEG file"
            ) from None


def _map_png(anomaly_map: np.ndarray, threshold: float) -> str:
    """The anomaly map as a base64 8-bit grey PNG: 0 -> 0, threshold -> 128, 2x -> 255."""
    scale = 255.0 / (2.0 * threshold) if threshold > 0 else 0.0
    grey = np.rint(np.clip(anomaly_map * scale, 0, 255)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def _read_upload(request: Request) -> tuple[bytes, str]:
    """The uploaded image: multipart field ``file`` (or ``image``), else the raw body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return await request.body(), "upload"
    try:
        form = await request.form(max_files=1, max_fields=8)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"the multipart form cannot be parsed: {exc}") from None
    upload = next((form[k] for k in UPLOAD_FIELDS if k in form), None)
    if upload is None or isinstance(upload, str):
        raise ProtocolError("the multipart form needs the image as a file field named 'file'")
    return await upload.read(), upload.filename or "upload"


def _predict_router() -> APIRouter:
    router = APIRouter()

    @router.post("/predict")
    async def predict(request: Request, anomaly_map: bool = False):
        """Upload an image (any size or mode); get its image score and label."""
        model: ServedModel = request.app.state.model
        data, filename = await _read_upload(request)
        if not data:
            raise ProtocolError("empty upload: send a PNG or JPEG as the multipart field 'file'")
        image = await to_thread.run_sync(_decode_upload, data, filename, model.input_size)
        outputs = await _score(request, image[None])
        score = float(outputs["image_score"][0, 0])
        result = {
            "model_name": model.name,
            "model_version": model.version,
            "image_score": score,
            "label": int(outputs["label"][0, 0]),
            "threshold": model.threshold,
            "input_size": model.input_size,
        }
        if anomaly_map:
            result["anomaly_map_png"] = await to_thread.run_sync(
                _map_png, outputs["anomaly_map"][0], model.threshold
            )
            result["anomaly_map_scale"] = "PNG grey value 128 = threshold, 255 = 2 x threshold"
        return result

    return router


def _error_handlers(app: FastAPI) -> None:
    """Answer every error as ``{"error": message}``, the v2 protocol's error body."""

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc.message)
        else:
            logger.info(
                "%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message
            )
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=400)


def create_app(model: ServedModel, settings: ServeSettings | None = None) -> FastAPI:
    """Build the service around a loaded model.

    Args:
        model: The model to serve (:func:`serving.model.load_model`).
        settings: Batching, auth and limit settings.

    Returns:
        The ASGI app (run it with uvicorn).
    """
    settings = settings or ServeSettings()
    metrics = ServiceMetrics()
    batcher = DynamicBatcher(
        model.run,
        max_batch_size=model.max_batch_size,
        max_delay=settings.max_delay_ms / 1000.0,
        instances=settings.instances,
        on_batch=metrics.observe_batch,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="noisyad inference service",
        version=_version(),
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.model = model
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.batcher = batcher
    _error_handlers(app)

    # Health probes and metrics stay open so orchestrators can reach them without the token.
    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready(request: Request):
        # Not ready once shutdown has begun: the batcher takes no new work then.
        return Response(status_code=503 if request.app.state.batcher.closed else 200)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    guarded = [Depends(require_token)]

    @app.get("/v2", dependencies=guarded)
    async def server_metadata():
        return {"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS}

    app.include_router(_v2_model_routes(), dependencies=guarded)
    app.include_router(_predict_router(), dependencies=guarded)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("noisyad")
    except PackageNotFoundError:
        return "0"
