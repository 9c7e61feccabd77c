"""Serving the registered student as a user does: ``mlflow models serve -m models:/NAME@ALIAS`` and curl.

A tiny converted student is logged and registered exactly as the pipeline's ``register`` task logs it
(:func:`tasks.register.log_student_model`), then a real ``mlflow models serve`` subprocess (the
``local`` env manager, the venv's ``bin`` on PATH as an activated venv has it) answers real HTTP
requests: a good one, bad params (HTTP 400 with one line naming the value) and an empty one.
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
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = (root / "serve.log").open("w")
    cmd = [
        f"{venv_bin}/mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{MODEL}@{ALIAS}",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


@pytest.mark.parametrize(
    ("params", "named"),
    [({"threshold": 5.0}, "threshold"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"seed": -1}, "seed")],
)
def test_bad_param_is_http_400_with_one_line(server, params, named):
    status, body = _post(f"{server}/invocations", {"inputs": {"prompt": ["1+1="]}, "params": params})
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    reason = body["message"].splitlines()[-1]
    assert f"params: {named}:" in reason and str(next(iter(params.values()))) in reason
    assert "stack_trace" not in body and "Traceback" not in body["message"]


def test_empty_request_is_http_400(server):
    status, body = _post(f"{server}/invocations", {"inputs": {"prompt": []}})
    assert status == 400 and "no prompts" in body["message"]
