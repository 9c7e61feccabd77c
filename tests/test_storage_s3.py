"""S3 storage against a local S3-compatible server (moto) on 127.0.0.1: round trips, integrity, outage."""

import os

import pytest

moto_server = pytest.importorskip("moto.server")
from helpers import free_port  # noqa: E402

from opdlm.storage import s3  # noqa: E402


@pytest.fixture(scope="module")
def endpoint():
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3.make_client().create_bucket(Bucket="opdlm")
    yield env["AWS_ENDPOINT_URL_S3"]
    server.stop()
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_file_round_trip_multipart(endpoint, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(s3.MULTIPART_THRESHOLD + 1234))  # forces a multipart upload
    digest = s3.upload_file(src, "s3://opdlm/data/big.bin")
    out = s3.download_file("s3://opdlm/data/big.bin", tmp_path / "back.bin")
    assert out.read_bytes() == src.read_bytes() and s3.sha256_of(out) == digest


def test_dir_round_trip_with_manifest(endpoint, tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"\x00" * 100)
    manifest = s3.upload_dir(d, "s3://opdlm/models/m1")
    assert set(manifest["files"]) == {"config.json", "sub/w.bin"}
    back = s3.download_dir("s3://opdlm/models/m1", tmp_path / "back")
    assert (back / "sub" / "w.bin").read_bytes() == b"\x00" * 100


def test_corrupt_object_is_detected(endpoint, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("hello")
    s3.upload_file(src, "s3://opdlm/x/f.txt")
    client = s3.make_client()
    client.put_object(Bucket="opdlm", Key="x/f.txt", Body=b"HELLO", Metadata={"sha256": s3.sha256_of(src)})
    with pytest.raises(s3.StorageError, match="integrity check failed"):
        s3.download_file("s3://opdlm/x/f.txt", tmp_path / "f2.txt", retries=0)
    assert not (tmp_path / "f2.txt").exists()


def test_outage_mid_upload_retries_then_fails_cleanly(endpoint, tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    for i in range(3):
        (d / f"part{i}.bin").write_bytes(bytes([i]) * 10)
    client = s3.make_client(max_attempts=1)
    real = client.upload_file
    calls = {"n": 0}

    def flaky(filename, bucket, key, **kw):
        calls["n"] += 1
        if key.endswith("part1.bin"):  # the server goes away for this file, every attempt
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=endpoint)
        return real(filename, bucket, key, **kw)

    client.upload_file = flaky
    with pytest.raises(
        s3.StorageError, match=r"upload of .*part1.bin.* failed after 3 attempts: EndpointConnectionError"
    ):
        s3.upload_dir(d, "s3://opdlm/ckpt/run1", client=client, retries=2, backoff_s=0.01)
    assert calls["n"] == 1 + 3  # part0 once, part1 three times
    listed = s3.make_client().list_objects_v2(Bucket="opdlm", Prefix="ckpt/run1")
    assert listed.get("KeyCount", 0) == 0  # nothing half-published
    with pytest.raises(s3.StorageError, match="not a complete upload"):
        s3.download_dir("s3://opdlm/ckpt/run1", tmp_path / "x", retries=0)
    assert not (tmp_path / "x").exists()


def test_transient_failure_is_retried(endpoint, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("data")
    client = s3.make_client()
    real = client.upload_file
    state = {"failed": False}

    def once(*a, **kw):
        if not state["failed"]:
            state["failed"] = True
            raise ConnectionResetError("connection reset by peer")
        return real(*a, **kw)

    client.upload_file = once
    s3.upload_file(src, "s3://opdlm/t/f.txt", client=client, backoff_s=0.01)
    assert state["failed"] and s3.download_file("s3://opdlm/t/f.txt", tmp_path / "g.txt").read_text() == "data"


def test_bad_uri():
    with pytest.raises(s3.StorageError, match="expected s3://BUCKET/KEY"):
        s3.parse_s3_uri("http://x/y")


def test_model_source_from_s3_converts(endpoint, tmp_path, monkeypatch, tiny_teacher_dir):
    from opdlm.sources.convert import convert_teacher

    monkeypatch.setenv("OPDLM_CACHE", str(tmp_path / "cache"))
    s3.upload_dir(tiny_teacher_dir, "s3://opdlm/teachers/tiny")
    out = convert_teacher("s3://opdlm/teachers/tiny", tmp_path / "student")
    assert (out / "model.safetensors").is_file()


def test_unknown_builtin_model(tmp_path):
    from opdlm.errors import SourceError
    from opdlm.sources.resolve import resolve_model_source

    with pytest.raises(SourceError, match="unknown builtin model 'builtin:huge'"):
        resolve_model_source("builtin:huge")
