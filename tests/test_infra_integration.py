"""End to end on real servers: the local stack (infra/local) runs the ``opdlm-tiny`` deployment.

Starts moto S3, MLflow, the Prefect server and a process worker on free ports, ``prefect deploy``s the
deployment from ``prefect.yaml``, runs it through the worker with tiny settings, then checks that the
flow run completed in the Prefect API, that the MLflow server holds the run and the registered model,
and that their artifacts are objects in the S3 store; finally stops everything it started and checks
that no process of the stack is left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "infra" / "local"
DEPLOYMENT = "opdlm-pipeline/opdlm-tiny"
RECIPE = "configs/tiny.yaml"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT_S = 300

# Small enough for the whole run (teacher bootstrap, convert, OPD, eval, register) to take about a
# minute on 2 cores; every stage still runs its real code path.
TINY_OVERRIDES = [
    "teacher.bootstrap.hidden_size=32",
    "teacher.bootstrap.num_layers=1",
    "teacher.bootstrap.num_heads=2",
    "teacher.bootstrap.intermediate_size=64",
    "teacher.bootstrap.steps=4",
    "teacher.bootstrap.warmup_steps=1",
    "teacher.bootstrap.batch_size=8",
    "teacher.bootstrap.n_train=64",
    "teacher.bootstrap.n_eval=0",
    "teacher.bootstrap.num_threads=1",
    "teacher.bootstrap.progress=false",
    "train.prompts_per_rollout=2",
    "train.optimizer_steps_per_rollout=1",
    "train.micro_batch_size=2",
    "train.num_threads=1",
    "train.warmup_rollout_steps=0",
    "train.rollout.max_new_tokens=8",
    # One curriculum stage of one rollout step: stage chaining is the pipeline's own tests' business.
    "train.stages=[{name: only, rollout_steps: 1, length: {start: 4, end: 8, ramp_steps: 1}}]",
    "sampler.max_new_tokens=8",
    "eval.limit=4",
    "eval.batch_size=4",
    "eval.sweep_thresholds=[0.9]",
]


def read_stack_env(path: Path) -> dict[str, str]:
    """``export K=V`` lines of the stack.env that start.sh writes."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            out[key] = value
    return out


def sh(args: list[str], env: dict, timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def api_get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def api_post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def stack_pids(state: Path) -> list[int]:
    return [int(p.read_text().split()[0]) for p in (state / "pids").glob("*.pid")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The local stack on free ports, in a temporary state folder; stopped (and checked) afterwards."""
    if not (REPO / "prefect.yaml").is_file():
        pytest.fail("prefect.yaml (deployment opdlm-tiny) is missing from the repository root")
    root = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "OPDLM_STACK_DIR": str(root / "state"),
        "OPDLM_PYTHON": sys.executable,
        "OPDLM_RUNS_DIR": str(root / "runs"),
        "S3_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "PREFECT_PORT": str(free_port()),
        "WORKER_PORT": str(free_port()),
        "HEALTH_TIMEOUT": "240",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick the run up quickly (default 10 s)
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for inherited in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "OPDLM_REPO_DIR"):
        env.pop(inherited, None)  # start.sh sets them; the worker must get its own
    start = sh(["bash", str(LOCAL / "start.sh")], env, timeout=600)
    state = root / "state"
    try:
        assert start.returncode == 0, f"start.sh failed:\n{start.stdout}\n{start.stderr}"
        client_env = {**env, **read_stack_env(state / "stack.env"), "PREFECT_HOME": str(root / "client-prefect")}
        yield {"env": client_env, "state": state, "start_output": start.stdout}
    finally:
        pids = stack_pids(state) if (state / "pids").is_dir() else []
        stop = sh(["bash", str(LOCAL / "stop.sh")], env, timeout=120)
        assert stop.returncode == 0, f"stop.sh failed:\n{stop.stdout}\n{stop.stderr}"
        left = [pid for pid in pids if _process_group_alive(pid)]
        assert not left, f"processes of the stack still running after stop.sh: {left}"
        assert not list((state / "pids").glob("*.pid"))


def _process_group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies waiting for init to reap them do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def flow_run_logs(api: str, flow_run_id: str) -> str:
    try:
        logs = api_post(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
    except Exception as exc:  # the logs only decorate a failure message
        return f"(could not read logs: {exc})"
    return "\n".join(f"{x['level']}: {x['message']}" for x in logs[-60:])


def test_deploy_and_run_tiny_pipeline_on_the_local_stack(stack):
    env, state = stack["env"], stack["state"]
    api = env["PREFECT_API_URL"]
    for service in ("s3", "mlflow", "prefect", "worker"):
        assert f"{service}: healthy" in stack["start_output"]
    assert sh(["bash", str(LOCAL / "status.sh")], env, timeout=60).returncode == 0

    deploy = sh([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "opdlm-tiny"], env, timeout=180)
    assert deploy.returncode == 0, f"prefect deploy failed:\n{deploy.stdout}\n{deploy.stderr}"

    params = json.dumps({"recipe": RECIPE, "overrides": TINY_OVERRIDES})
    run = sh(
        [sys.executable, "-m", "prefect", "--no-prompt", "deployment", "run", DEPLOYMENT, "--params", params],
        env,
        timeout=120,
    )
    assert run.returncode == 0, f"prefect deployment run failed:\n{run.stdout}\n{run.stderr}"
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout)
    assert found, f"no flow run id in:\n{run.stdout}"
    flow_run_id = found.group(1)

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        flow_run = api_get(f"{api}/flow_runs/{flow_run_id}")
        state_type = flow_run["state_type"]
        if state_type in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(3)
    worker_log = (state / "logs" / "worker.log").read_text()[-4000:]
    assert state_type == "COMPLETED", (
        f"flow run {flow_run_id} ended {state_type} ({flow_run['state']['message']}); command: "
        f"prefect deployment run {DEPLOYMENT} --params {shlex.quote(params)}\n"
        f"--- flow run logs ---\n{flow_run_logs(api, flow_run_id)}\n--- worker log ---\n{worker_log}"
    )
    deployment = api_get(f"{api}/deployments/{flow_run['deployment_id']}")
    assert deployment["name"] == "opdlm-tiny" and deployment["work_pool_name"] == "opdlm-process"

    check_mlflow_and_s3(env, flow_run_id)


def check_mlflow_and_s3(env: dict, flow_run_id: str) -> None:
    """The flow run's MLflow run and its registered model are on the server; their artifacts are S3 objects."""
    import boto3
    from mlflow.tracking import MlflowClient

    from opdlm.config.recipe import load_recipe

    recipe = load_recipe(REPO / RECIPE, TINY_OVERRIDES)
    name = recipe.registry.model_name or f"opdlm-{recipe.name}"
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # the pipeline's run; stages nest in it
    assert len(parents) == 1, f"{len(parents)} top-level MLflow runs are tagged with flow run {flow_run_id}"
    pipeline_run = parents[0]
    ids = {r.info.run_id for r in runs}
    assert all(r.data.tags["mlflow.parentRunId"] in ids for r in runs if r is not pipeline_run)  # one tree
    assert pipeline_run.info.status == "FINISHED"

    version = client.get_model_version_by_alias(name, "candidate")
    assert (version.name, version.version) == (name, pipeline_run.data.tags["model.version"])
    assert version.run_id == pipeline_run.info.run_id  # the version's source run is the pipeline run
    register_run = client.get_run(version.tags["register_run"])
    assert register_run.info.status == "FINISHED"
    assert register_run.data.tags["mlflow.parentRunId"] == pipeline_run.info.run_id

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )

    def s3_keys(uri: str) -> list[str]:
        assert uri.startswith("s3://"), f"artifacts at {uri}, not in the S3 store"
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
        return [obj["Key"][len(prefix.rstrip("/")) + 1 :] for page in pages for obj in page.get("Contents", [])]

    assert s3_keys(pipeline_run.info.artifact_uri), f"no objects under {pipeline_run.info.artifact_uri}"
    model_keys = s3_keys(client.get_model_version_download_uri(name, version.version))
    assert "MLmodel" in model_keys and any(k.endswith("model.safetensors") for k in model_keys), model_keys
