"""What a run writes: checkpoints of the whole training state, the final one, and the run summary."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from opdlm.train.checkpoint import save_checkpoint, step_dir_name, write_json
from opdlm.train.curriculum import last_completed_stage, stage_at
from opdlm.train.schedule import SCHEDULER_FILE, schedule_state
from opdlm.train.setup import RunContext

SUMMARY_FILE = "train_summary.json"


def _write_payload(ctx: RunContext, block_size: int):
    def write(folder: Path) -> None:
        model = ctx.student.model
        state_dict = ctx.stepper.full_state_dict()  # collective under ZeRO-3: every rank calls it
        if ctx.rank == 0:
            model.config.block_size = block_size
            model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
            ctx.student.tokenizer.save_pretrained(folder)
            (folder / SCHEDULER_FILE).write_text(
                json.dumps(schedule_state(ctx.cfg, ctx.counters.rollout_step), indent=1)
            )
        ctx.stepper.save(folder)
        rng = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        torch.save(rng, folder / f"rng_rank{ctx.rank}.pt")

    return write


def checkpoint(ctx: RunContext, block_size: int) -> Path:
    """Write a checkpoint of the current state (every rank calls it; rank 0 writes the shared files)."""
    c = ctx.counters
    state = {
        "counters": c.as_dict(),
        "fingerprint": ctx.fingerprint,
        "rollout_step": c.rollout_step,
        "data_cursor": c.rollout_step * ctx.cfg.prompts_per_rollout,
        "world_size": ctx.world_size,
    }
    ctx.last_checkpoint = save_checkpoint(
        ctx.checkpoints, c.rollout_step, _write_payload(ctx, block_size), state, ctx.cfg.keep_checkpoints
    )
    return ctx.last_checkpoint


def final_checkpoint(ctx: RunContext) -> Path:
    """The checkpoint of the current step: the one just written or resumed from, else a new one."""
    current = ctx.checkpoints / step_dir_name(ctx.counters.rollout_step)
    if current in (ctx.last_checkpoint, ctx.resumed_from):
        return current
    stage = stage_at(ctx.cfg.stages, max(ctx.counters.rollout_step - 1, 0)).stage
    return checkpoint(ctx, ctx.cfg.stage_block_size(stage))


def write_summary(ctx: RunContext) -> dict:
    """Write ``OUT/train_summary.json`` (atomically) with the run's counters; returns the summary."""
    c = ctx.counters
    summary = {
        "rollout_step": c.rollout_step,
        "total_rollout_steps": ctx.cfg.total_rollout_steps,
        "optimizer_steps": c.optimizer_steps,
        "cumulative_train_tokens": c.train_tokens,
        "rollout_tokens": c.rollout_tokens,
        "flops": {"rollout": c.flops_rollout, "teacher": c.flops_teacher, "student": c.flops_student, "total": c.flops},
        "skipped_rollouts": c.skipped_rollouts,
        "skipped_prompts": c.skipped_prompts,
        "last_stage_completed": last_completed_stage(ctx.cfg.stages, c.rollout_step),
        "finished": c.rollout_step >= ctx.cfg.total_rollout_steps,
        "objective": ctx.cfg.objective,
        "stages": [s.name for s in ctx.cfg.stages],
    }
    write_json(ctx.out / SUMMARY_FILE, summary)
    return summary
