"""What a run writes: checkpoints of the whole training state, the final one, and the run summary."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from opdlm.train.checkpoint import save_checkpoint, step_dir_name
from opdlm.train.curriculum import last_completed_stage, stage_at
from opdlm.train.folder import TrainingFolder, summary_fields
from opdlm.train.schedule import SCHEDULER_FILE, schedule_state
from opdlm.train.setup import Counters, RunContext


def _write_payload(ctx: RunContext, counters: Counters, block_size: int):
    def write(folder: Path) -> None:
        model = ctx.student.model
        state_dict = ctx.stepper.full_state_dict()  # collective under ZeRO-3: every rank calls it
        if ctx.rank == 0:
            model.config.block_size = block_size
            model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
            ctx.student.tokenizer.save_pretrained(folder)
            (folder / SCHEDULER_FILE).write_text(json.dumps(schedule_state(ctx.cfg, counters.rollout_step), indent=1))
        ctx.stepper.save(folder)
        rng = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        torch.save(rng, folder / f"rng_rank{ctx.rank}.pt")

    return write


def checkpoint(ctx: RunContext, counters: Counters, block_size: int) -> Path:
    """Write a checkpoint of the current state (every rank calls it; rank 0 writes the shared files).

    Args:
        ctx: the run.
        counters: the counters after the last completed rollout step.
        block_size: the block size of that step's stage, stored in the checkpoint's ``config.json``.

    Returns:
        The checkpoint folder.
    """
    state = {
        "counters": counters.as_dict(),
        "fingerprint": ctx.fingerprint,
        "rollout_step": counters.rollout_step,
        "data_cursor": counters.rollout_step * ctx.cfg.prompts_per_rollout,
        "world_size": ctx.world_size,
    }
    return save_checkpoint(
        ctx.checkpoints,
        counters.rollout_step,
        _write_payload(ctx, counters, block_size),
        state,
        ctx.cfg.keep_checkpoints,
    )


def final_checkpoint(ctx: RunContext, counters: Counters, newest: Path | None) -> Path:
    """The checkpoint of the current step: ``newest`` (the one just written or resumed from) if it is that, else a new
    one."""
    current = ctx.checkpoints / step_dir_name(counters.rollout_step)
    if current == newest:
        return current
    stage = stage_at(ctx.cfg.stages, max(counters.rollout_step - 1, 0)).stage
    return checkpoint(ctx, counters, ctx.cfg.stage_block_size(stage))


def write_summary(ctx: RunContext, c: Counters) -> dict:
    """Write the folder's summary (:meth:`TrainingFolder.write_summary`) with the run's counters ``c``; returns it."""
    summary = {
        **summary_fields(c.rollout_step, ctx.cfg.total_rollout_steps),
        "optimizer_steps": c.optimizer_steps,
        "cumulative_train_tokens": c.train_tokens,
        "rollout_tokens": c.rollout_tokens,
        "flops": {"rollout": c.flops_rollout, "teacher": c.flops_teacher, "student": c.flops_student, "total": c.flops},
        "skipped_rollouts": c.skipped_rollouts,
        "skipped_prompts": c.skipped_prompts,
        "last_stage_completed": last_completed_stage(ctx.cfg.stages, c.rollout_step),
        "objective": ctx.cfg.objective,
        "stages": [s.name for s in ctx.cfg.stages],
    }
    TrainingFolder(ctx.out).write_summary(summary)
    return summary
