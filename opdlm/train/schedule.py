"""Learning rate: linear warmup then cosine decay to ``min_lr``, as a pure function of the optimizer step.

Being a pure function of the step count, the scheduler's whole state is that count, which the
checkpoint stores; a resumed run gets bit-identical learning rates.
"""

from __future__ import annotations

import math

from opdlm.config.train import TrainConfig

SCHEDULER_FILE = "scheduler.json"  # the schedule's state inside a checkpoint


def learning_rate(opt_step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """LR of 0-based optimizer step ``opt_step``.

    Warmup rises linearly to ``peak_lr`` over ``warmup_steps`` (step 0 already gets ``peak/warmup``);
    then cosine from ``peak_lr`` to ``min_lr`` at ``total_steps - 1``.
    """
    if warmup_steps > 0 and opt_step < warmup_steps:
        return peak_lr * (opt_step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min(max(opt_step - warmup_steps, 0) / decay_steps, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_state(cfg: TrainConfig, rollout_step: int) -> dict:
    """The schedule's whole state after ``rollout_step`` rollout steps: its parameters and next step index.

    Stored in every checkpoint; a resumed run checks it against its own, so a changed schedule
    cannot silently continue an old run.
    """
    k_steps = cfg.optimizer_steps_per_rollout
    return {
        "kind": "linear_warmup_cosine",
        "next_index": rollout_step * k_steps,
        "total_steps": cfg.total_rollout_steps * k_steps,
        "warmup_steps": cfg.warmup_rollout_steps * k_steps,
        "peak_lr": cfg.lr,
        "min_lr": cfg.min_lr,
        "stage_lrs": [s.lr for s in cfg.stages],
    }
