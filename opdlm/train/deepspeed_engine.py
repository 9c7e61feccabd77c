"""DeepSpeed ZeRO behind the trainer's stepper interface, and the teacher as a ZeRO-3 inference engine.

The loop never sees DeepSpeed: :class:`DeepSpeedStepper` has the same ``backward`` / ``step`` /
``save`` / ``load`` methods as :class:`~opdlm.train.stepper.TorchStepper`, plus the two things ZeRO-3
changes (a consolidated state dict for saving, and gathered weights while sampling rollouts).

What the JSON configs in ``configs/deepspeed/`` may leave to us (``"auto"``): batch sizes (one
micro-batch per ``backward``; the loop accumulates and marks the last micro-batch itself), gradient
clipping (``train.grad_clip``). The optimiser is always torch's AdamW built here, so nothing has to
be JIT-compiled (DeepSpeed's CPU Adam is not needed), and mixed precision stays torch autocast from
``train.precision`` with fp32 master weights, so a JSON that turns on DeepSpeed's own bf16/fp16 is
refused rather than silently doubling the cast.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from opdlm.config.train import TrainConfig
from opdlm.errors import ConfigError
from opdlm.fsutil import read_json_object
from opdlm.models.student import Student
from opdlm.train import distributed

DS_DIR = "deepspeed"  # sub-folder of a checkpoint holding DeepSpeed's (possibly per-rank) optimizer state
DS_TAG = "state"

# The frozen teacher's default engine: ZeRO-3 partitions its weights across ranks and keeps them in
# CPU memory between uses; each layer is fetched to the accelerator just for its forward.
TEACHER_OFFLOAD_DEFAULT: dict[str, Any] = {
    "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True}},
}


def read_ds_json(path: str | Path, field: str) -> dict[str, Any]:
    """Read a DeepSpeed JSON config; a missing or invalid file fails with one line naming ``field``."""
    return read_json_object(path, ConfigError, f"{field}: DeepSpeed config ")


def _check_precision(ds: dict[str, Any], where: str) -> None:
    for key in ("bf16", "fp16"):
        enabled = ds.get(key, {}).get("enabled", "auto") if isinstance(ds.get(key), dict) else "auto"
        if enabled not in ("auto", False):
            raise ConfigError(
                f"{where}: {key}.enabled must be 'auto' or false; mixed precision comes from train.precision "
                "(torch autocast with fp32 master weights)"
            )
        ds[key] = {"enabled": False}


def resolve_ds_config(ds: dict[str, Any], cfg: TrainConfig, world_size: int, where: str) -> dict[str, Any]:
    """Fill the ``"auto"`` values of a training config from ``cfg``; refuse settings the loop owns.

    Args:
        ds: the JSON as read.
        cfg: the recipe's train section.
        world_size: data-parallel ranks.
        where: the file name, for error messages.
    """
    ds = json.loads(json.dumps(ds))  # deep copy
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(
            f"{where}: remove the 'optimizer'/'scheduler' sections; AdamW and its warmup+cosine schedule come from the "
            "train section (train.lr, train.min_lr, train.warmup_rollout_steps, ...)"
        )
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        if ds.get(key, "auto") != "auto":
            raise ConfigError(f"{where}: {key} must be 'auto' (micro-batches come from train.micro_batch_size)")
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = 1  # the loop marks the accumulation boundary itself
    ds["train_batch_size"] = cfg.micro_batch_size * world_size
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.grad_clip
    _check_precision(ds, where)
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch's AdamW under ZeRO
    ds.setdefault("steps_per_print", 1 << 30)
    ds.setdefault("wall_clock_breakdown", False)
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None):
        raise ConfigError(
            f"{where}: zero_optimization.offload_optimizer needs DeepSpeed's CPU Adam; this trainer uses torch AdamW. "
            "Remove offload_optimizer (shard with stage 3 instead)"
        )
    return ds


def resolve_teacher_ds_config(ds: dict[str, Any], world_size: int, where: str) -> dict[str, Any]:
    """The teacher's inference config: ZeRO stage 3 required, batch values filled, no optimiser."""
    ds = json.loads(json.dumps(ds))
    if ds.get("zero_optimization", {}).get("stage") != 3:
        raise ConfigError(
            f"{where}: the teacher's engine must use zero_optimization.stage 3 (it shards/offloads weights)"
        )
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(f"{where}: the teacher is inference-only; remove 'optimizer'/'scheduler'")
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = world_size
    _check_precision(ds, where)
    ds.setdefault("steps_per_print", 1 << 30)
    return ds


class DeepSpeedStepper:
    """AdamW under a DeepSpeed ZeRO engine (stage 0-3), with the loop's learning rate set each step."""

    def __init__(self, engine, optimizer: torch.optim.Optimizer):
        self.engine = engine
        self.optimizer = optimizer
        self.stage = engine.zero_optimization_stage()

    def backward(self, loss: torch.Tensor, last_micro_batch: bool = True) -> None:
        """Accumulate gradients of ``loss``; ``last_micro_batch`` lets the next :meth:`step` apply them."""
        self.engine.set_gradient_accumulation_boundary(last_micro_batch)
        self.engine.backward(loss)

    def step(self, lr: float) -> float:
        """Apply one AdamW update at ``lr`` (clipping per the config); returns the global grad norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (ZeRO-3: gathered layer by layer; call on every rank)."""
        if self.stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return None

    def rollout_context(self):
        """Sampling runs a different number of forwards on each rank, so ZeRO-3 gathers the weights
        once and lifts its per-module hooks for the rollout (no collective inside the sampler)."""
        if self.stage == 3:
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

            return unwrap_model_for_generation(self.engine)
        return contextlib.nullcontext()

    def save(self, folder: Path) -> None:
        """Every rank writes its part of the optimizer state under ``folder/deepspeed``."""
        self.engine.save_checkpoint(str(folder / DS_DIR), tag=DS_TAG, save_latest=False)

    def load(self, folder: Path) -> None:
        """Restore weights and optimizer state written by :meth:`save`."""
        path, _ = self.engine.load_checkpoint(
            str(folder / DS_DIR), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise ConfigError(
                f"checkpoint {folder} has no DeepSpeed state under {DS_DIR}/ (was it written without train.deepspeed?)"
            )


def make_deepspeed_stepper(
    student: Student, teacher: torch.nn.Module | None, cfg: TrainConfig
) -> tuple[DeepSpeedStepper, torch.nn.Module | None]:
    """Wrap the student in a ZeRO engine (``cfg.deepspeed``) and, with ``cfg.teacher_offload``, the
    teacher in a ZeRO-3 inference engine.

    Returns:
        ``(stepper, teacher)``: the teacher returned is the module to call (hooked by ZeRO-3 when
        offloaded; its forward fetches each layer's weights when needed).
    """
    import deepspeed

    distributed.init_process_group(True, student.device)
    world = distributed.world_size()
    ds = resolve_ds_config(read_ds_json(cfg.deepspeed, "train.deepspeed"), cfg, world, str(cfg.deepspeed))
    params = [p for p in student.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay, eps=1e-8
    )
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=student.model, optimizer=optimizer, config=ds)
    student.model = engine.module
    if teacher is not None and cfg.teacher_offload:
        if cfg.teacher_deepspeed:
            where = str(cfg.teacher_deepspeed)
            tds = resolve_teacher_ds_config(
                read_ds_json(cfg.teacher_deepspeed, "train.teacher_deepspeed"), world, where
            )
        else:
            tds = resolve_teacher_ds_config(TEACHER_OFFLOAD_DEFAULT, world, "teacher offload default")
        teacher_engine, *_ = deepspeed.initialize(model=teacher, config=tds)
        teacher_engine.module.eval()
        teacher = teacher_engine.module
    return DeepSpeedStepper(engine, ds_optimizer), teacher
