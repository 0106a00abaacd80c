"""S3 data sources: mirror an ``s3://bucket/prefix`` into a local cache folder.

The local readers (MVTec AD, Real-IAD, plain folder) then read the copy, so an S3 dataset
gives exactly the manifest the same files on disk would give. A rerun lists the prefix again
and downloads only objects whose ETag or size changed (per-prefix index of ETags); objects
deleted from the bucket since the last sync are removed from the copy.

Connection settings come from parameters or the standard AWS environment variables:
``AWS_ENDPOINT_URL_S3`` (else ``AWS_ENDPOINT_URL``) for an S3-compatible server such as MinIO,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION``. With a custom
endpoint, path-style addressing is used (MinIO and SeaweedFS need it inside a cluster).

The cache folder is ``cache_dir``, else ``$NOISYAD_S3_CACHE``, else
``$XDG_CACHE_HOME/noisyad/s3`` (``~/.cache/noisyad/s3``); the copy of ``s3://b/p/q`` lives in
``<cache>/data/<endpoint>/b/p/q`` so its folder name (the category for MVTec AD) is kept.

Example:
    >>> local = sync_prefix("s3://datasets/mvtec/bottle")
    >>> local.name
    'bottle'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from noisyad.data.sources import DataSourceError

logger = logging.getLogger(__name__)

CACHE_ENV = "NOISYAD_S3_CACHE"
_ACCESS_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
}
_CREDENTIALS_HINT = (
    "Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the parameters), and that this "
    "identity may list and read the bucket."
)
_DOWNLOAD_THREADS = 8


@dataclass(frozen=True)
class S3Settings:
    """How to reach the object store; None fields fall back to the AWS environment variables.

    Attributes:
        endpoint_url: S3-compatible endpoint (``http://minio:9000``); None means AWS itself
            unless ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` is set.
        access_key_id: Access key; None reads ``AWS_ACCESS_KEY_ID`` (or boto3's other sources).
        secret_access_key: Secret key; None reads ``AWS_SECRET_ACCESS_KEY``.
        region: Region; None reads ``AWS_DEFAULT_REGION`` (else ``AWS_REGION``).
        cache_dir: Where local copies go; None reads ``NOISYAD_S3_CACHE`` (see the module doc).
    """

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None
    cache_dir: str | Path | None = None

    def resolved_endpoint(self) -> str | None:
        """The endpoint in force: the parameter, else the environment, else None (AWS)."""
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

    def resolved_cache_dir(self) -> Path:
        """The cache root in force (see the module doc)."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        if os.environ.get(CACHE_ENV):
            return Path(os.environ[CACHE_ENV]).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "noisyad" / "s3"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix")``.

    Raises:
        DataSourceError: If the URI is not ``s3://`` or names no bucket.
    """
    if not uri.lower().startswith("s3://"):
        raise DataSourceError(f"{uri} is not an s3:// URI.")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise DataSourceError(f"{uri} names no bucket. Expected s3://bucket/prefix.")
    return bucket, prefix.strip("/")


def make_client(settings: S3Settings | None = None) -> Any:
    """Return a boto3 S3 client for ``settings`` (path-style addressing on custom endpoints)."""
    import boto3
    from botocore.config import Config

    settings = settings or S3Settings()
    endpoint = settings.resolved_endpoint()
    region = settings.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    config = Config(
        s3={"addressing_style": "path"} if endpoint else {},
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=_DOWNLOAD_THREADS * 2,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=region or ("us-east-1" if endpoint else None),
        config=config,
    )


def _where(client: Any) -> str:
    """Name the endpoint a client talks to, for error messages."""
    return f"endpoint {client.meta.endpoint_url}"


def _translate(exc: Exception, client: Any, bucket: str, prefix: str) -> DataSourceError:
    """Turn a boto3 failure into a DataSourceError that says what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    uri = f"s3://{bucket}/{prefix}"
    if isinstance(exc, NoCredentialsError):
        return DataSourceError(
            f"{uri}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        )
    if isinstance(exc, EndpointConnectionError):
        return DataSourceError(
            f"{uri}: cannot reach {_where(client)}. Set AWS_ENDPOINT_URL (or "
            f"AWS_ENDPOINT_URL_S3) to the object store's address and check that it is up."
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return DataSourceError(
                f"{uri}: bucket '{bucket}' does not exist at {_where(client)}. Check the bucket "
                f"name, or AWS_ENDPOINT_URL if the data lives on another server."
            )
        if code in _ACCESS_CODES or status == 403:
            return DataSourceError(
                f"{uri}: access to bucket '{bucket}' (prefix '{prefix}') was refused at "
                f"{_where(client)} ({code or status}). {_CREDENTIALS_HINT}"
            )
        return DataSourceError(f"{uri}: S3 request failed at {_where(client)}: {code} {exc}")
    return DataSourceError(f"{uri}: S3 request failed at {_where(client)}: {exc}")


def _list_objects(client: Any, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Map every key under ``prefix`` (folder markers left out) to its ETag and size."""
    objects: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                objects[item["Key"]] = {"etag": item.get("ETag", ""), "size": item["Size"]}
    return objects


def _neighbours(client: Any, bucket: str, prefix: str) -> str:
    """A few keys or folders next to a missing prefix, to help fix a typo."""
    parent = prefix.rstrip("/").rpartition("/")[0]
    parent = f"{parent}/" if parent else ""
    page = client.list_objects_v2(Bucket=bucket, Prefix=parent, Delimiter="/", MaxKeys=20)
    names = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    names += [o["Key"] for o in page.get("Contents", [])]
    shown = ", ".join(f"s3://{bucket}/{n}" for n in names[:10])
    return (
        f"Found under s3://{bucket}/{parent}: {shown}." if shown else f"Bucket '{bucket}' is empty."
    )


def _endpoint_slug(client: Any) -> str:
    """A folder name for the endpoint, so equal bucket names on two servers do not collide."""
    url = client.meta.endpoint_url or "aws"
    host = re.sub(r"^[a-z0-9]+://", "", url.lower()).rstrip("/")
    return re.sub(r"[^a-z0-9._-]+", "_", host) or "aws"


def _local_path(root: Path, relative: str) -> Path:
    """Where an object goes; refuses keys that would escape ``root`` (``..``, absolute)."""
    target = (root / relative).resolve()
    if relative.startswith("/") or not target.is_relative_to(root.resolve()):
        raise DataSourceError(f"S3 key '{relative}' would be written outside {root}; refusing it.")
    return target


def _download(client: Any, bucket: str, key: str, target: Path) -> None:
    """Stream one object to ``target`` through a temporary file (never a half-written file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(body, out, length=1 << 20)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _sync(
    client: Any,
    bucket: str,
    prefix: str,
    objects: dict[str, dict[str, Any]],
    local_root: Path,
    index_path: Path,
) -> int:
    """Bring ``local_root`` in line with ``objects`` (keys relative to ``prefix``).

    ``index_path`` records the ETag and size of every file this sync wrote, so that the next
    sync of the same URI downloads only what changed and removes only what it wrote.

    Returns:
        How many objects were downloaded.
    """
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}

    wanted = {key[len(prefix) :]: meta for key, meta in objects.items()}
    stale = [relative for relative in index if relative not in wanted]
    for relative in stale:
        _local_path(local_root, relative).unlink(missing_ok=True)
    todo = []
    for relative, meta in wanted.items():
        target = _local_path(local_root, relative)
        have = index.get(relative)
        if have != meta or not target.is_file() or target.stat().st_size != meta["size"]:
            todo.append((prefix + relative, target))

    failures: list[tuple[str, Exception]] = []

    def fetch(item: tuple[str, Path]) -> None:
        try:
            _download(client, bucket, item[0], item[1])
        except Exception as exc:  # collected, and the first one raised below
            failures.append((item[0], exc))

    progress = tqdm(
        total=len(todo), desc="Downloading", unit="file", disable=not sys.stderr.isatty()
    )
    with ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS) as pool:
        for _ in pool.map(fetch, todo):
            progress.update()
    progress.close()

    # Record what is on disk now, failed downloads left out, so a rerun resumes.
    # Limitation: two processes syncing the same URI at once both download (files are
    # replaced atomically, so the copy stays whole); a lock file per index would lift it.
    failed = {key[len(prefix) :] for key, _ in failures}
    index_path.parent.mkdir(parents=True, exist_ok=True)
    done = {relative: meta for relative, meta in wanted.items() if relative not in failed}
    index_path.write_text(json.dumps(done, sort_keys=True))
    if failures:
        key, exc = failures[0]
        raise _translate(exc, client, bucket, key) from exc
    if stale:
        logger.info("%s: removed %d files deleted from the bucket", local_root, len(stale))
    return len(todo)


def sync_prefix(uri: str, settings: S3Settings | None = None, client: Any | None = None) -> Path:
    """Mirror ``s3://bucket/prefix`` (a folder, or one object) into the cache; return the copy.

    Args:
        uri: ``s3://bucket/prefix``. A prefix is read as a folder (``prefix/...``); if it has no
            objects below it but is itself an object's key, that one object is fetched.
        settings: Endpoint, credentials, region and cache folder (None: the environment).
        client: A boto3 S3 client to use instead of one made from ``settings``.

    Returns:
        The local folder (or file, for one object) that mirrors ``uri``.

    Raises:
        DataSourceError: If the bucket does not exist, access is refused, the endpoint cannot
            be reached, or nothing is stored under the prefix; the message says what to do.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    settings = settings or S3Settings()
    client = client or make_client(settings)
    bucket, prefix = parse_s3_uri(uri)
    folder_prefix = f"{prefix}/" if prefix else ""
    cache = settings.resolved_cache_dir()
    local_base = cache / "data" / _endpoint_slug(client) / bucket

    def index_path(kind: str) -> Path:
        key = f"{_endpoint_slug(client)}|{bucket}|{prefix}|{kind}"
        return cache / "index" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    try:
        objects = _list_objects(client, bucket, folder_prefix)
        if objects:
            local_root = local_base / prefix if prefix else local_base
            downloaded = _sync(
                client, bucket, folder_prefix, objects, local_root, index_path("folder")
            )
        else:
            single = _list_objects(client, bucket, prefix) if prefix else {}
            if prefix not in single:
                raise DataSourceError(
                    f"s3://{bucket}/{prefix}: no objects under prefix '{prefix}' in bucket "
                    f"'{bucket}' at {_where(client)}. Check the prefix (keys are "
                    f"case-sensitive) or upload the dataset there. "
                    f"{_neighbours(client, bucket, prefix)}"
                )
            parent, _, _ = prefix.rpartition("/")
            parent_prefix = f"{parent}/" if parent else ""
            objects = {prefix: single[prefix]}
            folder = local_base / parent if parent else local_base
            downloaded = _sync(client, bucket, parent_prefix, objects, folder, index_path("object"))
            local_root = local_base / prefix
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, client, bucket, prefix) from exc

    size = sum(meta["size"] for meta in objects.values())
    logger.info(
        "s3://%s/%s -> %s: %d objects (%.1f MB), %d downloaded, %d up to date",
        bucket,
        prefix,
        local_root,
        len(objects),
        size / 1e6,
        downloaded,
        len(objects) - downloaded,
    )
    return local_root
