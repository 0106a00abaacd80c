"""Load benchmark of ``noisyad serve`` on loopback, bounded in time and request count.

One run measures, against a server it starts itself on 127.0.0.1 (and stops at the end):

1. throughput at batch B (default 16): a raw ONNX Runtime session in this process and the
   server fed batch-B binary requests by 1 and by 2 clients, taking turns over a few rounds;
   overhead = 1 - server / raw (median over the rounds), in wall-clock throughput and in CPU
   time per image (the latter barely moves when other work shares the cores);
2. latency p50/p99 of single-image requests at 1, 8 and 32 concurrent clients;
3. a soak: 32 clients for ``--duration`` seconds (60 by default), which must see zero errors;
4. the server's resident memory before any load, before the soak and after it.

Requests are built and parsed by tritonclient's own codec (binary tensors, the tritonclient
default) and sent over keep-alive HTTP/1.1 connections by a minimal asyncio client, so 32
clients cost one thread here. Client and server share this machine's cores: the numbers
include that contention (the load averages are reported too).

Usage:
    python benchmarks/serve_load.py                       # builds a small demo model first
    python benchmarks/serve_load.py --model brick.onnx --duration 60 --json bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as httpclient

logger = logging.getLogger("serve_load")

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the only address this benchmark ever sends to
MAX_REQUESTS = 200_000  # hard cap per phase, whatever the duration


def build_demo_model(folder: Path) -> Path:
    """Train the small demo model (about 10 s) and export it to ONNX."""
    from noisyad.data import open_source
    from noisyad.data.demo import make_demo_dataset
    from noisyad.export import export_onnx
    from noisyad.training import TrainConfig, train_category

    data = folder / "demo"
    make_demo_dataset(
        data,
        contamination=0.1,
        n_train_normal=30,
        n_test_normal=8,
        n_test_defective=8,
        categories=("brick",),
    )
    train_category(open_source(str(data)), "brick", TrainConfig(), folder / "model")
    return export_onnx(folder / "model", folder / "brick.onnx")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak, in MB, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.MULTILINE))
    return {"rss_mb": int(fields["VmRSS"]) / 1024, "peak_rss_mb": int(fields["VmHWM"]) / 1024}


def start_server(model: Path, port: int, max_batch: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "serving",
        "--model",
        str(model),
        "--host",
        HOST,
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch),
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=output)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/v2/health/ready", timeout=2):
                return process
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise TimeoutError("server not ready in 120 s")


def request_bytes(port: int, images: np.ndarray) -> bytes:
    """One complete HTTP/1.1 request: tritonclient's binary v2 body behind minimal headers."""
    tensor = httpclient.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    wanted = [httpclient.InferRequestedOutput(n) for n in ("image_score", "label", "anomaly_map")]
    body, length = httpclient.InferenceServerClient.generate_request_body([tensor], wanted)
    head = (
        f"POST /v2/models/brick/infer HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Length: {len(body)}\r\nInference-Header-Content-Length: {length}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """A keep-alive HTTP/1.1 connection that posts prepared requests.

    A generic async HTTP client costs more CPU per request than the server does on this
    2-core machine; this one only writes bytes and reads a Content-Length body, so the
    numbers measure the server, not the load generator.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def load(
    port: int, images: np.ndarray, clients: int, seconds: float, max_requests: int
) -> dict:
    """``clients`` concurrent loops posting ``images`` for ``seconds``; latencies and errors."""
    request = request_bytes(port, images)
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client_loop() -> None:
        nonlocal sent
        connection = Connection(port)
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            started = time.perf_counter()
            try:
                status, headers, body = await asyncio.wait_for(connection.post(request), 60)
                if status != 200:
                    errors.append(f"{status}: {body[:200]!r}")
                    continue
                result = httpclient.InferenceServerClient.parse_response_body(
                    body, header_length=int(headers["inference-header-content-length"])
                )
                if result.as_numpy("image_score").shape != (len(images), 1):
                    errors.append("wrong image_score shape")
                    continue
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                await connection.close()
                continue
            latencies.append(time.perf_counter() - started)
        await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {
        "clients": clients,
        "batch": len(images),
        "seconds": round(elapsed, 2),
        "requests_ok": len(latencies),
        "images": len(latencies) * len(images),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "images_per_s": round(len(latencies) * len(images) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_throughput(session, images: np.ndarray, seconds: float) -> dict:
    """ONNX Runtime alone on the same batch; images/s and CPU milliseconds per image."""
    feeds = {"image": images}
    session.run(None, feeds)
    runs = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds and runs < MAX_REQUESTS:
        session.run(None, feeds)
        runs += 1
    elapsed = time.perf_counter() - started
    images_done = runs * len(images)
    return {
        "images_per_s": round(images_done / elapsed, 1),
        "cpu_ms_per_image": round((time.process_time() - cpu) * 1e3 / max(images_done, 1), 2),
    }


def batch_histogram(base: str) -> dict:
    """Mean batch size the server formed, from its Prometheus metrics."""
    text = httpx.get(f"{base}/metrics").text
    count = float(re.search(r"^noisyad_batch_size_count (\S+)", text, re.MULTILINE).group(1))
    total = float(re.search(r"^noisyad_batch_size_sum (\S+)", text, re.MULTILINE).group(1))
    return {"batches": int(count), "mean_batch_size": round(total / count, 2) if count else 0}


def serving(model: Path, max_batch: int):
    """Start a server on a free loopback port; return the process and its port."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="noisyad-bench-")) / "serve.log"
    return start_server(model, port, max_batch, log), port


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def throughput(args, model: Path, session, batch: np.ndarray) -> dict:
    """Raw session and server at the same batch, taking turns in short slices.

    The server's maximum batch size equals the batch, so two clients keep one request
    computing and one queued, and every batch the server runs is the raw session's batch.
    Load from other work on the shared cores hits both alike; the medians are the result.
    """
    process, port = serving(model, len(batch))
    rounds = []
    try:
        asyncio.run(load(port, batch, 1, 1.0, 5))  # warm-up
        for number in range(args.rounds):
            logger.info("throughput round %d/%d, batch %d", number + 1, args.rounds, len(batch))
            measured = raw_throughput(session, batch, args.slice_seconds)
            raw = measured["images_per_s"]
            row = {"raw_images_per_s": raw, "raw_cpu_ms_per_image": measured["cpu_ms_per_image"]}
            for clients in (1, 2):
                cpu = cpu_seconds(process.pid)
                phase = asyncio.run(
                    load(port, batch, clients, args.slice_seconds, args.max_requests)
                )
                cpu_ms = (cpu_seconds(process.pid) - cpu) * 1e3 / max(phase["images"], 1)
                row[f"server_{clients}client_images_per_s"] = phase["images_per_s"]
                row[f"server_{clients}client_cpu_ms_per_image"] = round(cpu_ms, 2)
                row[f"server_{clients}client_errors"] = phase["errors"]
                row[f"overhead_{clients}client"] = round(1 - phase["images_per_s"] / raw, 3)
                row[f"cpu_overhead_{clients}client"] = round(
                    cpu_ms / measured["cpu_ms_per_image"] - 1, 3
                )
            rounds.append(row)
    finally:
        stop(process)
    medians = {
        f"median_{key}": round(float(np.median([r[key] for r in rounds])), 3) for key in rounds[0]
    }
    return {"rounds": rounds, **medians}


def latency_and_soak(args, model: Path, single: np.ndarray) -> dict:
    """Single-image latency at 1, 8 and 32 clients, then the soak, on a max-batch-32 server."""
    results = {}
    process, port = serving(model, 32)
    try:
        asyncio.run(load(port, single, 1, 1.0, 50))  # warm-up
        results["memory_before"] = rss_mb(process.pid)
        for clients in (1, 8, 32):
            logger.info("latency, batch 1, %d clients, %.0f s", clients, args.phase_seconds)
            phase = asyncio.run(load(port, single, clients, args.phase_seconds, args.max_requests))
            results[f"latency_{clients}clients"] = phase
        results["memory_before_soak"] = rss_mb(process.pid)
        logger.info("soak, batch 1, 32 clients, %.0f s", args.duration)
        results["soak_32clients"] = asyncio.run(
            load(port, single, 32, args.duration, args.max_requests)
        )
        results["memory_after"] = rss_mb(process.pid)
        results["batches"] = batch_histogram(f"http://{HOST}:{port}")
    finally:
        stop(process)
    return results


def _load() -> list[float]:
    """The machine's 1/5/15-minute load averages (other work on the cores skews the numbers)."""
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description="Load benchmark of noisyad serve on loopback.")
    parser.add_argument("--model", type=Path, help="ONNX file (default: build the demo model)")
    parser.add_argument("--duration", type=float, default=60.0, help="soak seconds at 32 clients")
    parser.add_argument("--phase-seconds", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--batch", type=int, default=16, help="batch of the throughput phase")
    parser.add_argument("--rounds", type=int, default=5, help="raw/server throughput turns")
    parser.add_argument("--slice-seconds", type=float, default=4.0, help="seconds per turn")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS, help="cap per phase")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.max_requests = min(args.max_requests, MAX_REQUESTS)

    workdir = Path(tempfile.mkdtemp(prefix="noisyad-bench-"))
    model = args.model or build_demo_model(workdir)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (args.batch, 128, 128, 3), dtype=np.uint8)
    single = batch[:1]
    results: dict = {"model": str(model), "cores": os.cpu_count(), "load_avg_start": _load()}

    import onnxruntime as ort

    sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere
    from serving.model import session_options

    # The same session options as the server's, so the difference is the serving itself.
    session = ort.InferenceSession(
        str(model), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    results[f"throughput_batch{args.batch}"] = throughput(args, model, session, batch)
    results.update(latency_and_soak(args, model, single))
    results["load_avg_end"] = _load()

    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
