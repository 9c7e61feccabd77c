"""The training launcher: recipe ``resources`` -> python / torchrun / deepspeed argv, checked against the
launchers' own argument parsers and ``opdlm train``'s, and one-line errors for resources that cannot run."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from opdlm.cli.main import main
from opdlm.config.base import validate_config
from opdlm.config.recipe import Recipe
from opdlm.config.resources import ResourcesConfig
from opdlm.errors import ConfigError
from opdlm.train.folder import TrainingFolder
from opdlm.train.launch import training_command, training_env

PY = "/venv/bin/python"
TRAIN = ["train", "--config", "r.yaml", "--out", "runs/x"]


def cmd(resources: dict, env: dict | None = None, deepspeed: str | None = None, **kw) -> list[str]:
    return training_command(
        "r.yaml",
        "runs/x",
        resources=ResourcesConfig(**resources),
        python=PY,
        deepspeed_config=deepspeed,
        env=env or {},
        **kw,
    )


def split_at_train_module(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher args, the `opdlm` args after the module name)."""
    i = argv.index("opdlm.cli.main")
    return argv[:i], argv[i + 1 :]


def assert_train_args_parse(train_args: list[str]) -> dict:
    """The argv really is accepted by `opdlm train` (parsed by its click command, not run)."""
    import typer.main

    from opdlm.cli import main as cli_main

    cli_main._register()
    group = typer.main.get_command(cli_main.app)
    ctx = group.make_context("opdlm", list(train_args), resilient_parsing=False)
    sub = group.get_command(ctx, train_args[0])
    return sub.make_context("train", list(train_args[1:])).params


def test_python_launcher_passes_every_option_through():
    argv = cmd(
        {}, teacher="builtin:tiny", student="s", data="d.jsonl", until_stage="warmup", overrides=["train.lr=1e-5"]
    )
    assert argv == [
        PY,
        "-m",
        "opdlm.cli.main",
        *TRAIN,
        "--teacher",
        "builtin:tiny",
        "--student",
        "s",
        "--data",
        "d.jsonl",
        "--until-stage",
        "warmup",
        "train.lr=1e-5",
    ]
    params = assert_train_args_parse(argv[3:])
    assert params["until_stage"] == "warmup" and list(params["overrides"]) == ["train.lr=1e-5"]


def test_auto_rules():
    r = ResourcesConfig
    assert r().resolve_launcher(None) == "python"
    assert r(gpus_per_node=1).resolve_launcher(None) == "python"
    assert r(gpus_per_node=0).resolve_launcher("zero2.json") == "python"  # DeepSpeed in-process on CPU
    assert r(gpus_per_node=1).resolve_launcher("zero2.json") == "deepspeed"
    assert r(gpus_per_node=4).resolve_launcher(None) == "torchrun"
    assert r(nodes=2).resolve_launcher(None) == "torchrun"
    assert r(gpus_per_node=4, launcher="torchrun").resolve_launcher("zero2.json") == "torchrun"
    assert r(processes_per_node=2).resolve_launcher(None) == "torchrun"  # CPU data parallel (gloo)
    assert r(processes_per_node=2).resolve_launcher("zero2.json") == "torchrun"


def test_torchrun_single_node_multi_gpu():
    from torch.distributed.run import parse_args

    argv = cmd({"gpus_per_node": 4}, overrides=["seed=3"])
    assert argv[:3] == [PY, "-m", "torch.distributed.run"]
    launcher, train_args = split_at_train_module(argv)
    ns = parse_args([*launcher[3:], "opdlm.cli.main", *train_args])
    assert ns.standalone and ns.nnodes == "1" and ns.nproc_per_node == "4" and ns.module
    assert ns.training_script == "opdlm.cli.main" and ns.training_script_args == [*TRAIN, "seed=3"]
    assert_train_args_parse(train_args)


def test_torchrun_multi_node_reads_scheduler_env():
    from torch.distributed.run import parse_args

    env = {"MASTER_ADDR": "node-a", "SLURM_JOB_ID": "4711"}
    argv = cmd({"nodes": 2, "gpus_per_node": 8, "master_port": 29600}, env=env)
    launcher, train_args = split_at_train_module(argv)
    ns = parse_args([*launcher[3:], "opdlm.cli.main", *train_args])
    assert not ns.standalone and ns.nnodes == "2" and ns.nproc_per_node == "8"
    assert ns.rdzv_backend == "c10d" and ns.rdzv_endpoint == "node-a:29600" and ns.rdzv_id == "4711"
    # Every node runs the identical command: c10d assigns node ranks.
    assert cmd({"nodes": 2, "gpus_per_node": 8, "master_port": 29600}, env={**env, "NODE_RANK": "1"}) == argv
    assert "--rdzv-id" in argv and argv[argv.index("--rdzv-id") + 1] == "4711"
    assert cmd({"nodes": 2, "rdzv_id": "job7"}, env=env)[argv.index("--rdzv-id") + 1] == "job7"


def test_deepspeed_single_node():
    from deepspeed.launcher.runner import parse_args

    argv = cmd({"gpus_per_node": 8}, deepspeed="configs/deepspeed/zero3.json", until_stage="main")
    assert argv[:3] == [PY, "-m", "deepspeed.launcher.runner"]
    ns = parse_args(argv[3:])
    assert (ns.num_nodes, ns.num_gpus, ns.master_port) == (1, 8, 29500)
    assert ns.module and ns.no_local_rank and not ns.no_ssh
    assert ns.user_script == "opdlm.cli.main" and ns.user_args == [*TRAIN, "--until-stage", "main"]
    assert_train_args_parse(ns.user_args)


def test_deepspeed_multi_node_per_node_and_head():
    from deepspeed.launcher.runner import parse_args

    res = {"nodes": 4, "gpus_per_node": 8, "hostfile": "/job/hosts"}
    ns = parse_args(cmd(res, env={"MASTER_ADDR": "10.0.0.1", "SLURM_NODEID": "2"}, deepspeed="z.json")[3:])
    assert (ns.hostfile, ns.num_nodes, ns.num_gpus, ns.master_addr) == ("/job/hosts", 4, 8, "10.0.0.1")
    assert ns.no_ssh and ns.node_rank == 2
    ns = parse_args(cmd({**res, "node_launch": "head"}, env={}, deepspeed="z.json")[3:])
    assert not ns.no_ssh and ns.node_rank == -1 and ns.master_addr == "" and ns.hostfile == "/job/hosts"


@pytest.mark.parametrize(
    "resources,env,deepspeed,needle",
    [
        ({"nodes": 2, "gpus_per_node": 8}, {}, None, "MASTER_ADDR is not set but torchrun on resources.nodes=2"),
        ({"nodes": 2, "gpus_per_node": 8}, {}, "z.json", "resources.hostfile is not set but deepspeed on 2 nodes"),
        (
            {"nodes": 2, "gpus_per_node": 8, "hostfile": "h"},
            {"MASTER_ADDR": "a"},
            "z.json",
            "NODE_RANK (or SLURM_NODEID) is not set",
        ),
        (
            {"nodes": 2, "gpus_per_node": 8, "hostfile": "h"},
            {"MASTER_ADDR": "a", "NODE_RANK": "2"},
            "z.json",
            "NODE_RANK 2 is out of range",
        ),
        ({"gpus_per_node": 2, "launcher": "deepspeed"}, {}, None, "train.deepspeed is not set"),
    ],
)
def test_unlaunchable_resources_fail_in_one_line(resources, env, deepspeed, needle):
    with pytest.raises(ConfigError) as info:
        cmd(resources, env=env, deepspeed=deepspeed)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "resources,needle",
    [
        (
            {"gpus_per_node": 4, "launcher": "python"},
            "launcher 'python' runs one process but nodes=1 x processes per node=4",
        ),
        ({"launcher": "deepspeed"}, "launcher 'deepspeed' needs gpus_per_node >= 1"),
        (
            {"nodes": 2, "launcher": "torchrun", "node_launch": "head"},
            "node_launch 'head' needs the deepspeed launcher",
        ),
        ({"gpus_per_node": -1}, "resources.gpus_per_node: Input should be greater than or equal to 0"),
        ({"gpus_per_node": 8, "processes_per_node": 4}, "processes_per_node (4) must equal gpus_per_node (8)"),
    ],
)
def test_bad_resources_in_a_recipe_fail_in_one_line(resources, needle):
    with pytest.raises(ConfigError) as info:
        validate_config(Recipe, {"resources": resources}, source="recipe.yaml")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_training_env_splits_threads_and_keeps_the_users_settings():
    res = ResourcesConfig(gpus_per_node=4)
    env = training_env({"PATH": "/bin"}, resources=res, cpu_count=32)
    assert env["PATH"] == "/bin" and not any(k.startswith("MLFLOW_") for k in env)  # ranks never log to MLflow
    assert env["OMP_NUM_THREADS"] == "8" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    kept = training_env({"OMP_NUM_THREADS": "2"}, resources=ResourcesConfig(), cpu_count=2)
    assert kept["OMP_NUM_THREADS"] == "2" and "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in kept


def test_opdlm_launch_dry_run_uses_the_recipe(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("resources:\n  gpus_per_node: 2\ntrain:\n  stages: [{name: only, rollout_steps: 1}]\n")
    code = main(["launch", "--config", str(recipe), "--out", str(tmp_path / "o"), "--dry-run", "train.lr=1e-5"])
    assert code == 0
    argv = shlex.split(capsys.readouterr().out.strip())
    assert argv[1:3] == ["-m", "torch.distributed.run"] and argv[-1] == "train.lr=1e-5"
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    code = main(["launch", "--config", str(recipe), "--out", str(tmp_path / "o"), "--dry-run", "resources.nodes=2"])
    assert code == 2 and "error: MASTER_ADDR is not set" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_command_trains_with_two_cpu_ranks(tiny_teacher_dir, tmp_path):
    """The generated torchrun command really runs: two gloo ranks train one tiny stage into one folder."""
    import json
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    overrides = [
        "train.device=cpu",
        "train.num_threads=1",
        "train.prompts_per_rollout=2",
        "train.optimizer_steps_per_rollout=1",
        "train.micro_batch_size=1",
        "train.warmup_rollout_steps=0",
        "train.rollout.max_new_tokens=4",
        "train.stages=[{name: only, rollout_steps: 1, length: {start: 4, end: 4, ramp_steps: 1}}]",
    ]
    resources = ResourcesConfig(processes_per_node=2)
    out = tmp_path / "out"
    argv = training_command(
        repo / "configs" / "tiny.yaml", out, resources=resources, teacher=str(tiny_teacher_dir), overrides=overrides
    )
    env = training_env(os.environ, resources=resources)
    proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trained student ->") == 2  # one line per rank
    summary = json.loads(TrainingFolder(out).summary_file.read_text())
    assert summary["finished"] and summary["last_stage_completed"] == "only" and summary["rollout_step"] == 1
