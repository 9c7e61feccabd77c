"""Serving the registered student as a user does: ``mlflow models serve -m models:/NAME@ALIAS`` and curl.

A tiny converted student is logged and registered exactly as the pipeline's ``register`` task logs it
(:func:`tasks.register.log_student_model`), then a real ``mlflow models serve`` subprocess, started
with the very line ``summary.md`` prints (:func:`opdlm.pipeline.serving.serve_command`: the ``local``
env manager, the venv's ``bin`` first on PATH) from a shell whose PATH lacks the venv, answers real
HTTP requests: a good one, a batch of bad ones (HTTP 400 with one line naming the field, before any
decoding: lengths against the model's positions, seed range, prompt type, count and size, value
ranges) and an empty one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from helpers import free_port  # noqa: E402

from opdlm.pipeline.serving import serve_command  # noqa: E402

pytestmark = pytest.mark.integration
MODEL, ALIAS = "opdlm-tiny", "champion"
START_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def registered(tiny_student_dir, tmp_path_factory):
    """The tiny student registered as ``opdlm-tiny@champion`` in a fresh SQLite tracking store."""
    import mlflow
    from mlflow import MlflowClient

    from tasks.register import log_student_model

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    sampler = json.loads((Path(tiny_student_dir) / "config.json").read_text())["sampler_defaults"]
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}  # set_*_uri writes them
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        info = log_student_model(run_id, tiny_student_dir, sampler, {"teacher": "tiny-test"})
        version = mlflow.register_model(info.model_uri, MODEL)
    finally:
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None: the default again
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    client.set_registered_model_alias(MODEL, ALIAS, version.version)
    client.set_terminated(run_id)
    return uri, root


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(registered):
    uri, root = registered
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    # a shell whose PATH lacks the venv and with no MLflow URI set: the printed line must bring both
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PATH"] = path
    log = (root / "serve.log").open("w")
    line = serve_command(MODEL, ALIAS, port=port, tracking_uri=uri, venv_bin=venv_bin)  # what summary.md prints
    proc = subprocess.Popen(
        ["bash", "-c", line], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"mlflow models serve did not come up:\n{(root / 'serve.log').read_text()[-3000:]}"
                )
            time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def test_served_model_generates(server):
    status, body = _post(
        f"{server}/invocations",
        {"inputs": {"prompt": ["12+35=", "7*6="]}, "params": {"max_new_tokens": 8, "threshold": 0.8}},
    )
    assert status == 200, body
    rows = body["predictions"]
    assert len(rows) == 2
    assert all(isinstance(r["text"], str) and 1 <= r["num_tokens"] <= 8 and r["tokens_per_step"] >= 1.0 for r in rows)
    assert all(round(r["tokens_per_step"], 2) == r["tokens_per_step"] for r in rows)  # opdlm.numbers' rate rule


# Every bad request goes to the one served instance (no second server start): each is HTTP 400 with one
# line naming the field, answered before any decoding (so in seconds, whatever it asked for).
BAD_REQUESTS = [
    ({"params": {"threshold": 5.0}}, "params: threshold:", "5.0"),
    ({"params": {"max_new_tokens": 0}}, "params: max_new_tokens:", "0"),
    ({"params": {"seed": -1}}, "params: seed:", "-1"),
    ({"params": {"max_new_tokens": 1_000_000}}, "params: max_new_tokens:", "do not fit the model's 1,024 positions"),
    ({"params": {"seed": 2**64}}, "params: seed:", "18446744073709551616"),
    ({"params": {"top_k": -1}}, "params: top_k:", "-1"),
    ({"params": {"top_p": 1.5}}, "params: top_p:", "1.5"),
    ({"params": {"temperature": -1.0}}, "params: temperature:", "-1.0"),
    ({"prompt": [None]}, "inputs: prompt[0]:", "valid string"),
    ({"prompt": ["x"] * 65}, "inputs: prompt:", "at most 64"),
    ({"prompt": ["x" * 1000]}, "inputs: prompt[0]:", "exceed the model's 1,024 positions"),
]


def test_bad_requests_are_http_400_with_one_line_before_any_work(server):
    for extra, named, shown in BAD_REQUESTS:
        body = {"inputs": {"prompt": extra.get("prompt", ["1+1="])}, "params": extra.get("params", {})}
        start = time.monotonic()
        status, reply = _post(f"{server}/invocations", body)
        assert status == 400 and reply["error_code"] == "INVALID_PARAMETER_VALUE", (extra, reply)
        reason = reply["message"].splitlines()[-1]
        assert named in reason and shown in reason, (extra, reason)
        assert "stack_trace" not in reply and "Traceback" not in reply["message"]
        assert time.monotonic() - start < 20, (extra, "took long: it decoded before refusing")


def test_empty_request_is_http_400(server):
    status, body = _post(f"{server}/invocations", {"inputs": {"prompt": []}})
    assert status == 400 and "no prompts" in body["message"]
