"""Learning rate: linear warmup then cosine decay to ``min_lr``, as a pure function of the optimizer step.

Being a pure function of the step count, the scheduler's whole state is that count, which the
checkpoint stores; a resumed run gets bit-identical learning rates.
"""

from __future__ import annotations

import math


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
