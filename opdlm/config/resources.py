"""The ``resources`` section of a recipe: how many machines and GPUs the training stage runs on.

The section only chooses the *process launcher*; what each training process does (plain PyTorch or
DeepSpeed ZeRO) is decided by ``train.deepspeed``. :mod:`opdlm.train.launch` turns the section into
the command line.

``launcher: auto`` resolves, in order:

1. ``deepspeed`` when ``train.deepspeed`` is set and GPUs are used (``gpus_per_node >= 1``);
2. ``torchrun`` when more than one process is needed (``nodes > 1`` or ``gpus_per_node > 1``);
3. ``python`` (one process: CPU, or a single GPU without DeepSpeed).

Multi-node jobs are started once per node by the scheduler (``node_launch: per_node``: ``srun``,
one Kubernetes pod per node); the scheduler exports ``MASTER_ADDR`` (and ``NODE_RANK`` or SLURM's
``SLURM_NODEID``). ``node_launch: head`` lets DeepSpeed's own launcher reach the other hosts of
``hostfile`` over ssh/pdsh from the first node instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from opdlm.config.base import StrictModel

Launcher = Literal["python", "torchrun", "deepspeed"]


class ResourcesConfig(StrictModel):
    """Compute for the training stage; the launcher turns it into a ``torchrun``/``deepspeed`` command."""

    nodes: int = Field(1, ge=1, description="Machines (SLURM nodes, Kubernetes pods).")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per machine; 0 trains on CPU (one process per node).")
    launcher: Literal["auto", "python", "torchrun", "deepspeed"] = Field(
        "auto",
        description=(
            "auto: deepspeed when train.deepspeed is set and GPUs are used, torchrun for >1 process, else python."
        ),
    )
    processes_per_node: int | None = Field(
        None,
        ge=1,
        description="Training processes per machine (default: one per GPU, 1 on CPU); on CPU, >1 runs "
        "gloo data parallel, e.g. to exercise a multi-process launch without GPUs.",
    )
    master_port: int = Field(29500, ge=1, le=65535, description="Rendezvous port of the multi-process launchers.")
    node_launch: Literal["per_node", "head"] = Field(
        "per_node",
        description="per_node: the scheduler starts the launcher on every node (srun, one pod per node); "
        "head: deepspeed on the first node reaches the hosts of `hostfile` over ssh/pdsh.",
    )
    hostfile: str | None = Field(
        None, description="DeepSpeed hostfile (`host slots=N` per line); required by multi-node deepspeed."
    )
    rdzv_id: str | None = Field(
        None,
        description="torchrun rendezvous id shared by all nodes of one job (default: $SLURM_JOB_ID, else 'opdlm').",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ResourcesConfig:
        if self.processes_per_node and self.gpus_per_node and self.processes_per_node != self.gpus_per_node:
            raise ValueError(
                f"processes_per_node ({self.processes_per_node}) must equal gpus_per_node ({self.gpus_per_node}): "
                "one training process per GPU"
            )
        procs = self.world_size
        if self.launcher == "python" and procs > 1:
            raise ValueError(
                f"launcher 'python' runs one process but nodes={self.nodes} x processes per node={self.procs_per_node} "
                "needs several; use launcher torchrun, deepspeed or auto"
            )
        if self.launcher == "deepspeed" and self.gpus_per_node < 1:
            raise ValueError(
                "launcher 'deepspeed' needs gpus_per_node >= 1 (DeepSpeed's launcher refuses to start without GPUs)"
            )
        if self.node_launch == "head" and self.launcher == "torchrun":
            raise ValueError(
                "node_launch 'head' needs the deepspeed launcher (torchrun starts on every node: use per_node)"
            )
        return self

    @property
    def procs_per_node(self) -> int:
        """Training processes on each machine: ``processes_per_node``, else one per GPU, else one."""
        return self.processes_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        """Training processes in the whole job."""
        return self.nodes * self.procs_per_node

    def deepspeed_problem(self, deepspeed_config: str | None) -> str | None:
        """Why these resources cannot launch DeepSpeed with ``train.deepspeed`` = ``deepspeed_config`` (None: they can).

        The one home of the rule: the recipe validator refuses such a recipe when it loads, and the launcher
        refuses such arguments when it is called directly.
        """
        if self.launcher == "deepspeed" and not deepspeed_config:
            return (
                "resources.launcher is 'deepspeed' but train.deepspeed is not set; "
                "set train.deepspeed=configs/deepspeed/zero2.json or use launcher torchrun for plain PyTorch"
            )
        if self.resolve_launcher(deepspeed_config) == "deepspeed" and self.nodes > 1 and not self.hostfile:
            return (
                f"resources.hostfile is not set but deepspeed on {self.nodes} nodes (resources.nodes) needs one "
                "(one `host slots=GPUS` line per node; infra/slurm/train.sbatch writes it)"
            )
        return None

    def resolve_launcher(self, deepspeed_config: str | None) -> Launcher:
        """The launcher ``auto`` stands for, given the recipe's ``train.deepspeed`` (see module doc)."""
        if self.launcher != "auto":
            return self.launcher
        if deepspeed_config and self.gpus_per_node >= 1:
            return "deepspeed"
        if self.world_size > 1:
            return "torchrun"
        return "python"
