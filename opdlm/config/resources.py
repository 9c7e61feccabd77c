"""The ``resources`` section of a recipe: how many machines and GPUs the training stage runs on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from opdlm.config.base import StrictModel


class ResourcesConfig(StrictModel):
    """Compute for the training stage; the launcher turns it into a ``torchrun``/``deepspeed`` command."""

    nodes: int = Field(1, ge=1, description="Machines (SLURM nodes, Kubernetes pods).")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per machine; 0 trains in one CPU process.")
    launcher: Literal["auto", "python", "torchrun", "deepspeed"] = Field(
        "auto", description="auto: deepspeed when train.deepspeed is set and GPUs are used, torchrun for >1 GPU, else python."
    )
    master_port: int = Field(29500, ge=1, le=65535, description="Rendezvous port of the multi-process launchers.")
