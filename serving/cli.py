"""``noisyad serve``: run the inference service on a model file or a registered MLflow model.

Usage:
    noisyad serve --model brick.onnx --port 8000
    noisyad serve --model models:/noisyad-brick@champion --tracking-uri sqlite:///mlflow.db
    NOISYAD_SERVE_TOKEN=secret noisyad serve --model brick.onnx --host 0.0.0.0

Registered on the main ``noisyad`` command line by :mod:`noisyad.cli`. Only typer is
imported here; the web stack loads when the command runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

TOKEN_ENV = "NOISYAD_SERVE_TOKEN"


def serve(
    model: Annotated[
        str, typer.Option(help="ONNX file or folder, or models:/<name>@<alias> (MLflow).")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    name: Annotated[str | None, typer.Option(help="Model name in the URLs.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda (CPU fallback) or auto.")] = "cpu",
    max_batch_size: Annotated[int, typer.Option(help="Largest batch per request/run.")] = 32,
    max_delay_ms: Annotated[
        float, typer.Option(help="How long a request waits for a fuller batch.")
    ] = 2.0,
    instances: Annotated[int, typer.Option(help="Batches computed at the same time.")] = 1,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads (0 = one per core).")] = 0,
    token: Annotated[
        str | None,
        typer.Option(envvar=TOKEN_ENV, help="Require 'Authorization: Bearer TOKEN'."),
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MB.")] = 64.0,
    tracking_uri: Annotated[
        str | None,
        typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow server for models:/ URIs."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings.")] = False,
) -> None:
    """Serve a model over the KServe v2 / Triton HTTP protocol (plus POST /predict)."""
    import uvicorn

    from serving.app import ServeSettings, create_app
    from serving.model import load_model

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    try:
        served = load_model(
            model,
            name=name,
            device=device,
            max_batch_size=max_batch_size,
            threads=threads,
            tracking_uri=tracking_uri,
        )
        settings = ServeSettings(
            max_delay_ms=max_delay_ms,
            instances=instances,
            token=token or None,
            max_body_bytes=int(max_body_mb * (1 << 20)),
        )
    except Exception as exc:  # a bad path, URI or file ends with one line, not a traceback
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from exc
    if settings.token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "Listening on %s without a token: anyone who reaches the port can call the model "
            "(set %s to require one)",
            host,
            TOKEN_ENV,
        )
    app = create_app(served, settings)
    logging.getLogger(__name__).info(
        "Serving %s on http://%s:%d (v2 protocol under /v2, uploads at /predict)",
        served.name,
        host,
        port,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
