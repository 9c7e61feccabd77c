"""The training stage's process launcher: a recipe's ``resources`` -> the command line and environment.

:func:`training_command` builds the argv of ``opdlm train`` wrapped in the right launcher (one plain
Python process, ``torchrun`` or ``deepspeed``); :func:`training_env` builds the ranks' environment
(threads, NCCL, unbuffered output). The pipeline runs the result as a subprocess (a task timeout
cannot interrupt in-process training, and multi-GPU launchers need their own process); ``opdlm
launch`` execs it under SLURM. No rank talks to a tracking service: rank 0 writes the training
folder's ``metrics.jsonl``, which the pipeline (or ``opdlm track`` after a SLURM job) replays into
MLflow (:class:`opdlm.pipeline.training_metrics.MetricReplay`).

Both launchers are invoked through the interpreter that runs the pipeline (``python -m
torch.distributed.run`` is exactly ``torchrun``; ``python -m deepspeed.launcher.runner`` is exactly
``deepspeed``), so the ranks always run in the same environment even where the venv's ``bin`` is not
on ``PATH``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from opdlm.config.resources import Launcher, ResourcesConfig
from opdlm.errors import ConfigError

TRAIN_MODULE = "opdlm.cli.main"


def training_command(
    recipe_path: str | Path,
    out_dir: str | Path,
    *,
    resources: ResourcesConfig,
    overrides: Sequence[str] = (),
    teacher: str | None = None,
    student: str | Path | None = None,
    data: str | Path | None = None,
    until_stage: str | None = None,
    deepspeed_config: str | None = None,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv that runs ``opdlm train`` under the launcher ``resources`` asks for.

    Args:
        recipe_path: recipe YAML the training processes load (with ``overrides``).
        out_dir: training output folder (re-running on it resumes).
        resources: the recipe's ``resources`` section.
        overrides: dotted ``key=value`` recipe overrides, passed on unchanged.
        teacher, student, data, until_stage: the matching ``opdlm train`` options (left out when None).
        deepspeed_config: the recipe's ``train.deepspeed`` (only used to resolve ``launcher: auto``;
            the training processes read it from the recipe themselves).
        python: interpreter that runs the launcher and every rank.
        env: where multi-node jobs read ``MASTER_ADDR`` and ``NODE_RANK``/``SLURM_NODEID``
            (default: this process's environment, as the scheduler set it).

    Raises:
        ConfigError: the resources cannot be launched as asked (one line naming what is missing).
    """
    env = os.environ if env is None else env
    launcher = resources.resolve_launcher(deepspeed_config)
    train_args = _train_args(recipe_path, out_dir, overrides, teacher, student, data, until_stage)
    if launcher == "python":
        return [python, "-m", TRAIN_MODULE, *train_args]
    if launcher == "torchrun":
        return [python, "-m", "torch.distributed.run", *_torchrun_args(resources, env), "-m", TRAIN_MODULE, *train_args]
    return [
        python,
        "-m",
        "deepspeed.launcher.runner",
        *_deepspeed_args(resources, deepspeed_config, env),
        "--module",
        TRAIN_MODULE,
        *train_args,
    ]


def training_env(
    base_env: Mapping[str, str], *, resources: ResourcesConfig, cpu_count: int | None = None
) -> dict[str, str]:
    """A copy of ``base_env`` for the training processes.

    Values the user already set for threads and NCCL are kept.

    Args:
        base_env: environment to copy (usually ``os.environ``).
        resources: the recipe's ``resources`` section (threads are split between a node's processes).
        cpu_count: CPUs of this machine (default: those this process may use).
    """
    out = dict(base_env)
    cpus = cpu_count if cpu_count is not None else _usable_cpus()
    # torchrun would otherwise force 1 thread per rank; N ranks x all cores would oversubscribe.
    out.setdefault("OMP_NUM_THREADS", str(max(1, cpus // resources.procs_per_node)))
    out.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers' threads + fork = deadlock warnings
    out.setdefault("PYTHONUNBUFFERED", "1")  # rank output reaches the pipeline's log as it is printed
    if resources.gpus_per_node >= 1:
        # A rank that dies mid-collective makes the others fail instead of hanging until the job times out.
        out.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    return out


def _usable_cpus() -> int:
    """CPUs this process may run on (the scheduler's cgroup/affinity on Linux), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _train_args(recipe_path, out_dir, overrides, teacher, student, data, until_stage) -> list[str]:
    args = ["train", "--config", str(recipe_path), "--out", str(out_dir)]
    for flag, value in (
        ("--teacher", teacher),
        ("--student", student),
        ("--data", data),
        ("--until-stage", until_stage),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args + [str(o) for o in overrides]


def _torchrun_args(res: ResourcesConfig, env: Mapping[str, str]) -> list[str]:
    if res.nodes == 1:
        # --standalone: a private rendezvous on a free local port, so two jobs on one box never collide.
        return ["--standalone", "--nnodes", "1", "--nproc-per-node", str(res.procs_per_node)]
    master = _master_addr(res, env, "torchrun")
    rdzv_id = res.rdzv_id or env.get("SLURM_JOB_ID") or "opdlm"
    # c10d rendezvous assigns node ranks itself: every node runs the same command.
    return [
        "--nnodes",
        str(res.nodes),
        "--nproc-per-node",
        str(res.procs_per_node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"{master}:{res.master_port}",
        "--rdzv-id",
        rdzv_id,
    ]


def _deepspeed_args(res: ResourcesConfig, deepspeed_config: str | None, env: Mapping[str, str]) -> list[str]:
    if problem := res.deepspeed_problem(deepspeed_config):  # the recipe validator's rule, for direct callers
        raise ConfigError(problem)
    # The rank reads LOCAL_RANK from its environment; `--local_rank=N` would be an unknown CLI option.
    common = [
        "--num_nodes",
        str(res.nodes),
        "--num_gpus",
        str(res.gpus_per_node),
        "--master_port",
        str(res.master_port),
        "--no_local_rank",
    ]
    if res.nodes == 1:
        return common
    args = ["--hostfile", res.hostfile, *common]
    if res.node_launch == "head":
        # DeepSpeed asks the first host for its address over ssh when MASTER_ADDR is not given.
        addr = env.get("MASTER_ADDR", "").strip()
        return [*args, "--master_addr", addr] if addr else args
    master = _master_addr(res, env, "deepspeed")
    return [*args, "--master_addr", master, "--no_ssh", "--node_rank", str(_node_rank(res, env))]


def _master_addr(res: ResourcesConfig, env: Mapping[str, str], launcher: Launcher) -> str:
    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        raise ConfigError(
            f"MASTER_ADDR is not set but {launcher} on resources.nodes={res.nodes} needs the first node's address "
            "(the scheduler exports it: see infra/slurm/train.sbatch)"
        )
    return addr


def _node_rank(res: ResourcesConfig, env: Mapping[str, str]) -> int:
    raw = env.get("NODE_RANK") or env.get("SLURM_NODEID")
    if raw is None:
        raise ConfigError(
            f"NODE_RANK (or SLURM_NODEID) is not set but deepspeed with resources.node_launch=per_node on "
            f"{res.nodes} nodes needs this node's rank"
        )
    try:
        rank = int(raw)
    except ValueError:
        raise ConfigError(f"NODE_RANK must be an integer (got {raw!r})") from None
    if not 0 <= rank < res.nodes:
        raise ConfigError(f"NODE_RANK {rank} is out of range for resources.nodes={res.nodes}")
    return rank
