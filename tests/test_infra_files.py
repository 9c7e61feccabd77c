"""The infra/ files without a Docker engine, a cluster or a scheduler: the compose stack parses (and
passes ``docker compose config`` where a client exists), no secret is committed, the Kubernetes base
job template passes Prefect's own validation and renders GPU requests, the sbatch template renders
per-node DeepSpeed commands, and the local stack's stop script signals only what start.sh started."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
COMPOSE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY", re.IGNORECASE)
INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
LONG_RUNNING = {"postgres", "s3", "mlflow", "prefect-server", "prefect-worker"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def filled_env_file(tmp_path: Path) -> Path:
    """.env.example with every empty value filled in, as a user would."""
    lines = [f"{k}={v or 'filled-' + k.lower()}" for k, v in env_example().items()]
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- docker compose ------------------------------------------------------------------------------


def test_compose_has_the_stack_with_health_checks_and_ordered_start():
    services = compose()["services"]
    assert set(services) == LONG_RUNNING | {"create-buckets"}
    for name in LONG_RUNNING:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    deps = {name: svc.get("depends_on", {}) for name, svc in services.items()}
    assert deps["mlflow"] == {
        "postgres": {"condition": "service_healthy"},
        "create-buckets": {"condition": "service_completed_successfully"},
    }
    assert deps["prefect-server"]["postgres"]["condition"] == "service_healthy"
    assert deps["prefect-worker"]["prefect-server"]["condition"] == "service_healthy"
    assert deps["prefect-worker"]["mlflow"]["condition"] == "service_healthy"
    assert services["create-buckets"]["restart"] == "no"


def test_compose_wires_postgres_and_s3_into_mlflow_and_prefect():
    services = compose()["services"]
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in mlflow_args and "@postgres:5432/mlflow" in mlflow_args
    assert "--artifacts-destination=s3://${OPDLM_ARTIFACT_BUCKET" in mlflow_args
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:8333"
    db_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and db_url.endswith("@postgres:5432/prefect")
    worker = services["prefect-worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "${OPDLM_WORK_POOL:-opdlm-process}" in worker["command"] and "--with-healthcheck" in worker["command"]
    assert worker["environment"]["OPDLM_REPO_DIR"] == "/opt/opdlm"
    assert "WORKDIR /opt/opdlm" in (INFRA / "docker" / "worker.Dockerfile").read_text()
    bucket_args = services["create-buckets"]["command"]
    assert (
        "${OPDLM_ARTIFACT_BUCKET:-opdlm-artifacts}" in bucket_args and "${OPDLM_DATA_BUCKET:-opdlm-data}" in bucket_args
    )
    for svc in services.values():  # published on the loopback address unless BIND_ADDRESS says otherwise
        for port in svc.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), port
    for name in ("postgres-init.sh", "seaweedfs-start.sh", "services.Dockerfile", "worker.Dockerfile"):
        assert (INFRA / "docker" / name).is_file()


def _walk_strings(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_strings(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_strings(v, (*path, str(i)))
    elif isinstance(node, str):
        yield path, node


def test_no_secret_is_committed():
    # Every secret-named setting in the compose file is an interpolation from infra/.env ...
    for path, value in _walk_strings(compose()):
        if SECRET_KEY.search(path[-1]):
            assert INTERPOLATION.match(value), f"{'.'.join(path)} has a literal value {value!r}"
        # ... and every password inside a URL too.
        for userinfo in re.findall(r"://[^/@\s]*:([^/@\s]+)@", value):
            assert userinfo.startswith("${POSTGRES_PASSWORD:?"), f"{'.'.join(path)} embeds a literal password"
    # The template leaves every secret empty; the filled-in copy is git-ignored.
    secrets = {k: v for k, v in env_example().items() if SECRET_KEY.search(k)}
    assert {"POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "HF_TOKEN"} <= set(secrets)
    assert all(v == "" for v in secrets.values()), secrets
    assert ".env" in (INFRA / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", "infra"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert "infra/.env" not in tracked
    for name in tracked:
        text = (REPO / name).read_text(errors="replace")
        assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----", text), name


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1] if v1 else None


def test_docker_compose_config_accepts_the_file(tmp_path):
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client on this machine (the file is checked by parsing above)")
    ok = subprocess.run(
        [*client, "-f", str(COMPOSE), "--env-file", str(filled_env_file(tmp_path)), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    # Without the secrets the stack refuses to start, naming the missing value.
    missing = subprocess.run(
        [*client, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert missing.returncode != 0 and "set " in missing.stderr and "in infra/.env" in missing.stderr


def test_service_image_pins_match_pyproject():
    import tomllib

    pipeline = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pipeline"]
    dockerfile = (INFRA / "docker" / "services.Dockerfile").read_text()
    for req in pipeline:
        name = re.split(r"[<>=\[]", req, maxsplit=1)[0]
        if name in ("prefect", "mlflow", "fastapi", "boto3"):
            assert f'"{req}"' in dockerfile, f"services.Dockerfile does not pin {req}"


# --- Kubernetes -------------------------------------------------------------------------------------


def test_helm_worker_values():
    values = yaml.safe_load((INFRA / "k8s" / "worker-values.yaml").read_text())["worker"]
    assert values["apiConfig"] == "selfHostedServer"
    assert values["selfHostedServerApiConfig"]["apiUrl"].endswith(":4200/api")
    assert values["config"]["type"] == "kubernetes" and values["config"]["workPool"] == "opdlm-gpu"
    pvc = yaml.safe_load((INFRA / "k8s" / "runs-pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "opdlm-runs"


def test_base_job_template_validates_and_renders_gpu_requests():
    import jsonschema
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values

    template = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())
    validate_base_job_template(template)  # what the Prefect server runs on `work-pool create`
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.validate(defaults, variables)

    values = {
        **defaults,
        "gpus": 8,
        "name": "run-1",
        "command": "prefect flow-run execute",
        "env": {"OPDLM_RUNS_DIR": "/runs"},
        "labels": {"app": "opdlm"},
    }
    job = apply_values(template["job_configuration"], values)["job_manifest"]
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "opdlm"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["args"] == "prefect flow-run execute" and container["env"] == {"OPDLM_RUNS_DIR": "/runs"}
    assert {"name": "runs", "mountPath": "/runs"} in container["volumeMounts"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "opdlm-runs"
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0


def test_prefect_yaml_deploys_to_the_pools_these_stacks_serve():
    """Process deployments target the pool of the local/compose worker; GPU ones the Kubernetes pool,
    with job variables the base job template declares."""
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    template_vars = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())["variables"]["properties"]
    gpu_pool = yaml.safe_load((INFRA / "k8s" / "worker-values.yaml").read_text())["worker"]["config"]["workPool"]
    compose_pool = re.search(r"OPDLM_WORK_POOL:-([\w-]+)", COMPOSE.read_text()).group(1)
    local_pool = re.search(r"OPDLM_WORK_POOL:-([\w-]+)", (INFRA / "local" / "common.sh").read_text()).group(1)
    pools = {d["name"]: d["work_pool"] for d in project["deployments"]}
    assert pools["opdlm-tiny"]["name"] == compose_pool == local_pool == env_example()["OPDLM_WORK_POOL"]
    gpu = [p for p in pools.values() if p["name"] != compose_pool]
    assert gpu, "prefect.yaml has no GPU deployment"
    for pool in gpu:
        assert pool["name"] == gpu_pool
        assert set(pool.get("job_variables", {})) <= set(template_vars), set(pool["job_variables"]) - set(template_vars)


# --- SLURM ------------------------------------------------------------------------------------------


def test_sbatch_renders_one_deepspeed_launch_per_node(tmp_path):
    """Run the sbatch script with fake scontrol/srun: srun runs the command once per node (SLURM_NODEID)."""
    from deepspeed.launcher.runner import parse_args

    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "scontrol").write_text('#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && printf "gpu-a\\ngpu-b\\n"\n')
    (shims / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == -* ]]; do shift; done\n"
        'for i in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do SLURM_NODEID=$i "$@" || exit $?; done\n'
    )
    for shim in shims.iterdir():
        shim.chmod(0o755)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ntrain:\n  stages: [{name: s, rollout_steps: 1}]\n")  # a recipe must say what it trains
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{shims}:{os.environ['PATH']}",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_JOB_ID": "77",
        "OPDLM_PYTHON": sys.executable,
        "OPDLM_LAUNCH_DRY_RUN": "1",
        "OPDLM_UNTIL_STAGE": "short",
    }
    env.pop("NODE_RANK", None)
    proc = subprocess.run(
        ["bash", str(INFRA / "slurm" / "train.sbatch"), str(recipe), str(out), "train.lr=2e-5"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "hostfile-77").read_text() == "gpu-a slots=8\ngpu-b slots=8\n"
    commands = [line for line in proc.stdout.splitlines() if "deepspeed.launcher.runner" in line]
    assert len(commands) == 2
    import shlex

    for rank, line in enumerate(commands):
        argv = shlex.split(line)
        ns = parse_args(argv[argv.index("deepspeed.launcher.runner") + 1 :])
        assert (ns.num_nodes, ns.num_gpus, ns.master_addr, ns.master_port) == (2, 8, "gpu-a", 29500)
        assert ns.no_ssh and ns.node_rank == rank and ns.hostfile == str(out / "hostfile-77")
        assert ns.module and ns.user_script == "opdlm.cli.main"
        assert ns.user_args[:5] == ["train", "--config", str(recipe), "--out", str(out)]
        assert "--until-stage" in ns.user_args and "train.lr=2e-5" in ns.user_args
        assert "train.deepspeed=configs/deepspeed/zero3.json" in ns.user_args


def test_sbatch_replays_the_metrics_into_mlflow_after_the_job_even_when_it_fails(tmp_path):
    """With MLFLOW_RUN_ID set, the job's metrics.jsonl reaches that run once srun returns (`opdlm track`),
    and the job's own exit code is kept."""
    from mlflow import MlflowClient

    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "scontrol").write_text('#!/bin/bash\nprintf "gpu-a\\n"\n')
    # the "training": rank 0's two lines in OUT/metrics.jsonl, then a crash
    (shims / "srun").write_text(
        "#!/bin/bash\nwhile [[ $# -gt 0 && $1 != --out ]]; do shift; done\n"
        """printf '{"step": 0, "loss": 1.0, "length_cap": 8}\\n{"step": 1, "loss": 0.5, "length_cap": 8}\\n'"""
        ' > "$2/metrics.jsonl"\nexit 3\n'
    )
    for shim in shims.iterdir():
        shim.chmod(0o755)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("slurm", (tmp_path / "art").as_uri())).info.run_id
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ntrain:\n  stages: [{name: s, rollout_steps: 2}]\n")
    env = {
        **os.environ,
        "PATH": f"{shims}:{os.environ['PATH']}",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_JOB_NODELIST": "gpu-a",
        "SLURM_JOB_ID": "78",
        "OPDLM_PYTHON": sys.executable,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_RUN_ID": run_id,
    }
    env.pop("OPDLM_LAUNCH_DRY_RUN", None)
    proc = subprocess.run(
        ["bash", str(INFRA / "slurm" / "train.sbatch"), str(recipe), str(tmp_path / "out")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "track: 2 step(s)" in proc.stdout
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "1_key/loss")] == [(0, 1.0), (1, 0.5)]


# --- local stack scripts ----------------------------------------------------------------------------


def test_local_scripts_are_valid_bash():
    for script in sorted((INFRA / "local").glob("*.sh")) + sorted((INFRA / "docker").glob("*.sh")):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"


def _stack_env(state: Path) -> dict:
    return {**os.environ, "OPDLM_STACK_DIR": str(state)}


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]


def test_stop_signals_exactly_what_start_recorded(tmp_path):
    state = tmp_path / "state"
    (state / "pids").mkdir(parents=True)
    ours = subprocess.Popen(["sleep", "300"], start_new_session=True)  # as start.sh launches: own session
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (state / "pids" / "mlflow.pid").write_text(f"{ours.pid} {_start_time(ours.pid)}\n")
        # A pid file whose process has another start time (the pid was reused) must not be signalled.
        (state / "pids" / "prefect.pid").write_text(f"{stranger.pid} 1\n")
        status = subprocess.run(
            ["bash", str(INFRA / "local" / "status.sh")], env=_stack_env(state), capture_output=True, text=True
        )
        assert status.returncode == 1 and re.search(rf"mlflow\s+pid {ours.pid}", status.stdout)
        stop = subprocess.run(
            ["bash", str(INFRA / "local" / "stop.sh")],
            env=_stack_env(state),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stop.returncode == 0, stop.stderr
        assert ours.wait(timeout=10) == -signal.SIGTERM
        assert stranger.poll() is None, "stop.sh signalled a process it did not start"
        assert "prefect: not running (removing stale" in stop.stdout
        assert not list((state / "pids").iterdir())
    finally:
        for proc in (ours, stranger):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_start_fails_clearly_when_a_port_is_taken(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **_stack_env(tmp_path / "state"),
            "S3_PORT": str(port),
            "OPDLM_PYTHON": sys.executable,
            "OPDLM_RUNS_DIR": str(tmp_path / "runs"),
        }
        t0 = time.monotonic()
        proc = subprocess.run(
            ["bash", str(INFRA / "local" / "start.sh")], env=env, capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken by another program (set S3_PORT)" in proc.stderr
    assert time.monotonic() - t0 < 60 and not list((tmp_path / "state" / "pids").iterdir())


def test_create_buckets_is_idempotent(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        script = [sys.executable, str(INFRA / "scripts" / "create_buckets.py"), "art", "data"]
        first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        second = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert first.stdout.splitlines() == ["bucket art: created", "bucket data: created"], first.stderr
    assert second.stdout.splitlines() == ["bucket art: exists", "bucket data: exists"], second.stderr
