"""S3 storage with multipart transfers, retries and integrity checks.

Files carry their sha256 in the object metadata and are verified after upload and after download.
Directories (a model, a checkpoint) are published as ``PREFIX/<files>`` plus ``PREFIX/_MANIFEST.json``
written last: a reader trusts a prefix only when its manifest exists, so an upload that dies half
way publishes nothing (and its staged objects are removed).

The endpoint comes from the environment like every AWS tool (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``), or from ``MLFLOW_S3_ENDPOINT_URL`` so MLflow's artifact store, DVC's remote
and this module all point at the same place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from opdlm.errors import OpdlmError
from opdlm.fsutil import atomic_dir

MANIFEST = "_MANIFEST.json"
MULTIPART_THRESHOLD = 8 * 1024 * 1024


class StorageError(OpdlmError):
    """An S3 transfer that failed after its retries, or an object that failed its integrity check."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    if not uri.startswith("s3://"):
        raise StorageError(f"not an S3 URI: {uri!r} (expected s3://BUCKET/KEY)")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"S3 URI {uri!r} has no bucket")
    return bucket, key


def endpoint_url() -> str | None:
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    )


def make_client(max_attempts: int = 3):
    """A boto3 S3 client with botocore's standard retry mode (connection errors, throttling, 5xx)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint_url(), config=config)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with one line, unless the bucket of ``uri`` answers.

    Called before a pipeline starts, so an unreachable or misspelt artifact store is reported at once
    instead of after the work it would have stored (and after every retry of every task).

    Raises:
        StorageError: the endpoint does not answer, the bucket does not exist, or access is denied.
    """
    import boto3
    from botocore.config import Config

    bucket, _ = parse_s3_uri(uri)
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=timeout_s, read_timeout=timeout_s)
    client = boto3.client("s3", endpoint_url=endpoint_url(), config=config)
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as exc:  # connection refused, DNS, 403, 404: the store cannot take artifacts
        where = endpoint_url() or "AWS"
        raise StorageError(
            f"artifact store {uri} is not reachable at {where}: {type(exc).__name__}: {str(exc).splitlines()[0]} "
            "(check OPDLM_ARTIFACT_ROOT and MLFLOW_S3_ENDPOINT_URL)"
        ) from None


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _with_retries(what: str, fn, retries: int, backoff_s: float):
    """Call ``fn`` up to ``retries + 1`` times with exponential backoff; then one clear error."""
    last = None
    for attempt in range(retries + 1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:  # botocore errors, connection resets, timeouts
            last = exc
            if attempt < retries:
                time.sleep(backoff_s * (2**attempt))
    raise StorageError(
        f"{what} failed after {retries + 1} attempts: {type(last).__name__}: {str(last).splitlines()[0]}"
    )


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, use_threads=True
    )


def upload_file(path: str | Path, uri: str, client=None, retries: int = 2, backoff_s: float = 0.5) -> str:
    """Upload one file (multipart above 8 MiB) and verify it landed whole. Returns its sha256."""
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"cannot upload {path}: no such file")
    bucket, key = parse_s3_uri(uri)
    client = client or make_client()
    digest = sha256_of(path)
    size = path.stat().st_size

    def put():
        client.upload_file(
            str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}, Config=_transfer_config()
        )
        head = client.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != digest:
            raise StorageError(f"integrity check failed for {uri}: size or sha256 differs after upload")

    _with_retries(f"upload of {path} to {uri}", put, retries, backoff_s)
    return digest


def download_file(
    uri: str, dst: str | Path, client=None, retries: int = 2, backoff_s: float = 0.5, sha256: str | None = None
) -> Path:
    """Download one object to ``dst`` atomically, checking its sha256 (given, or from its metadata)."""
    bucket, key = parse_s3_uri(uri)
    client = client or make_client()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.tmp-", dir=dst.parent)
    os.close(fd)
    try:

        def get():
            client.download_file(bucket, key, tmp, Config=_transfer_config())
            expected = sha256 or client.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")
            if expected and sha256_of(tmp) != expected:
                raise StorageError(f"integrity check failed for {uri}: sha256 differs after download")

        _with_retries(f"download of {uri}", get, retries, backoff_s)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def upload_dir(local_dir: str | Path, uri_prefix: str, client=None, retries: int = 2, backoff_s: float = 0.5) -> dict:
    """Publish a directory under ``uri_prefix``; the manifest goes last. Returns the manifest.

    On failure every object this call uploaded is deleted and :class:`StorageError` is raised, so a
    reader never sees a half-published directory.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"cannot upload {local_dir}: not a directory")
    bucket, prefix = parse_s3_uri(uri_prefix.rstrip("/"))
    client = client or make_client()
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    uploaded: list[str] = []
    manifest = {"files": {}}
    try:
        for p in files:
            rel = p.relative_to(local_dir).as_posix()
            key = f"{prefix}/{rel}" if prefix else rel
            manifest["files"][rel] = {
                "sha256": upload_file(p, f"s3://{bucket}/{key}", client, retries, backoff_s),
                "size": p.stat().st_size,
            }
            uploaded.append(key)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        key = f"{prefix}/{MANIFEST}" if prefix else MANIFEST
        _with_retries(
            f"manifest upload to s3://{bucket}/{key}",
            lambda: client.put_object(Bucket=bucket, Key=key, Body=body),
            retries,
            backoff_s,
        )
    except BaseException:
        for key in uploaded:  # best effort: the manifest is absent anyway
            try:
                client.delete_object(Bucket=bucket, Key=key)
            except Exception:
                pass
        raise
    return manifest


def download_dir(uri_prefix: str, dst: str | Path, client=None, retries: int = 2, overwrite: bool = False) -> Path:
    """Download a directory published by :func:`upload_dir`, verifying every file; atomic at ``dst``."""
    bucket, prefix = parse_s3_uri(uri_prefix.rstrip("/"))
    client = client or make_client()
    mkey = f"{prefix}/{MANIFEST}" if prefix else MANIFEST
    try:
        manifest = json.loads(
            _with_retries(
                f"reading {uri_prefix}/{MANIFEST}",
                lambda: client.get_object(Bucket=bucket, Key=mkey)["Body"].read(),
                retries,
                0.5,
            )
        )
    except StorageError as exc:
        raise StorageError(f"{uri_prefix} is not a complete upload (no readable {MANIFEST}): {exc}") from None
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        for rel, meta in manifest["files"].items():
            key = f"{prefix}/{rel}" if prefix else rel
            download_file(f"s3://{bucket}/{key}", tmp / rel, client, retries, sha256=meta["sha256"])
    return Path(dst)
