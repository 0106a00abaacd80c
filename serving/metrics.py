"""Prometheus metrics of the inference service, served at ``/metrics``.

Each app gets its own registry, so two apps in one process (tests) do not collide.

* ``noisyad_requests_total{endpoint, status}``: every answered request;
* ``noisyad_request_errors_total{endpoint, status}``: those answered with 4xx or 5xx;
* ``noisyad_request_duration_seconds{endpoint}``: latency from first byte to response;
* ``noisyad_batch_size``: images per executed batch (what the dynamic batcher formed);
* ``noisyad_inference_duration_seconds``: time ONNX Runtime spent per batch;
* ``noisyad_images_total``: images scored.

Example:
    >>> metrics = ServiceMetrics()
    >>> metrics.observe_batch(8, 0.05)
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """The service's counters and histograms in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "noisyad_requests",
            "Requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "noisyad_request_errors",
            "Requests answered with a 4xx or 5xx status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "noisyad_request_duration_seconds",
            "Request latency in seconds, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "noisyad_batch_size",
            "Images per batch run by the dynamic batcher.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "noisyad_inference_duration_seconds",
            "ONNX Runtime time per batch in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("noisyad_images", "Images scored.", registry=self.registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        code = str(status)
        self.requests.labels(endpoint, code).inc()
        if status >= 400:
            self.errors.labels(endpoint, code).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one executed batch."""
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        self.images.inc(size)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request (except ``/metrics``) into the metrics.

    The endpoint label is the route template (``/v2/models/{model_name}/infer``), never the
    raw path, so unknown URLs cannot blow up the label set.
    """

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - started)
