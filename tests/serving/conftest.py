"""Serving fixtures: the session's model exported to ONNX once, and one running server.

``onnx_path`` exports the session model of ``tests/conftest.py`` (trained once per session).
``server`` starts ``python -m serving`` (what ``noisyad serve`` runs) on a loopback port in a
subprocess, shared by the tritonclient and bad-request tests; it always stops at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from noisyad.export import export_onnx
from serving.model import ServedModel, load_model
from serving.triton_local import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The subprocess server accepts batches up to this size and bodies up to this many MB.
SERVER_MAX_BATCH = 8
SERVER_MAX_BODY_MB = 4


@dataclass(frozen=True)
class Server:
    """A running ``noisyad serve``."""

    url: str  # host:port, as tritonclient wants it
    process: subprocess.Popen
    max_batch_size: int
    max_body_bytes: int

    @property
    def base(self) -> str:
        return f"http://{self.url}"


@pytest.fixture(scope="session")
def onnx_path(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session model as an ONNX file (exported once)."""
    return export_onnx(trained.directory, tmp_path_factory.mktemp("onnx") / "brick.onnx")


@pytest.fixture(scope="session")
def served_model(onnx_path: Path) -> ServedModel:
    """The ONNX file loaded for serving (max batch size 8)."""
    return load_model(onnx_path, max_batch_size=SERVER_MAX_BATCH)


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """Four random uint8 images at the model's input size."""
    return np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def direct(onnx_path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The ONNX file's outputs on ``images``, run directly with ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = ["anomaly_map", "image_score", "label"]
    return dict(zip(names, session.run(names, {"image": images}), strict=True))


def wait_ready(base: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Poll ``/v2/health/ready`` until 200; fail with the server's output if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            raise RuntimeError(f"the server exited with {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base} not ready within {timeout} s")


def start_server(model: str | Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start ``python -m serving`` on a free loopback port; return the process and host:port.

    The server's output goes to ``log`` (a file, so a chatty server never blocks on a pipe).
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "serving",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--quiet",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("NOISYAD_SERVE_TOKEN", None)
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log)
    except BaseException:
        stop_server(process)
        raise
    return process, f"127.0.0.1:{port}"


def stop_server(process: subprocess.Popen) -> None:
    """Terminate the server process (SIGTERM, then SIGKILL)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def server(onnx_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """``noisyad serve`` on the session model: max batch 8, 4 MB body limit, 2 ms delay."""
    process, url = start_server(
        onnx_path,
        tmp_path_factory.mktemp("server") / "serve.log",
        "--max-batch-size",
        str(SERVER_MAX_BATCH),
        "--max-body-mb",
        str(SERVER_MAX_BODY_MB),
        "--max-delay-ms",
        "2",
    )
    try:
        yield Server(url, process, SERVER_MAX_BATCH, SERVER_MAX_BODY_MB << 20)
    finally:
        stop_server(process)
