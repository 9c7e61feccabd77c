"""What one rollout step will do, decided before it runs: a pure function of the config and the step index.

Everything a step derives from where it stands in the curriculum (its stage, block size, length cap,
rollout sampler, prompts, learning rates, the future-aware target's weight, random seeds, whether a
checkpoint follows) is computed here once, so the step functions read one frozen :class:`StepPlan`
instead of re-deriving it, and a resumed run plans exactly the step an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdlm.config.sampler import SamplerConfig
from opdlm.config.train import TrainConfig
from opdlm.train.curriculum import StagePosition, rollout_sampler, stage_at
from opdlm.train.data import stream_indices
from opdlm.train.future_aware import ramp_weight
from opdlm.train.schedule import learning_rate

# what each of a step's random streams is for (part of its seed, so the streams never coincide)
ROLLOUT, SELECTION, ORDER = 1, 2, 3


def step_seed(seed: int, step: int, purpose: int, rank: int) -> int:
    """The seed of one random stream of rollout ``step`` on ``rank`` (a resumed run draws what an uninterrupted one
    would)."""
    return (seed * 1_000_003 + step) * 8 + purpose + rank * 7_919


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class StepPlan:
    """One rollout step, decided up front.

    Attributes:
        step: 0-based global rollout step.
        position: its stage, the stage's index and the step counted inside the stage.
        block_size: the stage's block size (the rollout's, the training rows' and the checkpoint's).
        length_cap: the stage's rollout-length cap at this step (METHOD §5), before per-domain caps.
        sampler: the rollout sampler (the stage's block size and threshold applied); None for ``mdm_sft``,
            which trains on ground-truth responses and rolls out nothing.
        prompt_indices: indices of the training rows this rank rolls out.
        lrs: the learning rate of each of the step's ``optimizer_steps_per_rollout`` optimizer steps.
        target_weight: ``lambda`` of the future-aware target at this step (``train.future_aware``'s
            weight with its ramp applied); None for ``train.target: causal``.
        rollout_seed: seed of the rollout sampler's generator.
        selection_seed: seed of the state selection (or of the mdm_sft masks).
        order_seed: seed of the row order over the optimizer steps.
        checkpoint_after: a checkpoint follows the step (every ``checkpoint_every`` steps and at stage ends).
    """

    step: int
    position: StagePosition
    block_size: int
    length_cap: int
    sampler: SamplerConfig | None
    prompt_indices: tuple[int, ...]
    lrs: tuple[float, ...]
    target_weight: float | None
    rollout_seed: int
    selection_seed: int
    order_seed: int
    checkpoint_after: bool


def plan_step(cfg: TrainConfig, step: int, num_rows: int, seed: int, rank: int = 0, world_size: int = 1) -> StepPlan:
    """The plan of 0-based rollout ``step`` of a run over ``num_rows`` training rows.

    Args:
        cfg: the recipe's train section.
        step: 0-based global rollout step.
        num_rows: training rows in the prompt stream.
        seed: the run's training seed.
        rank: this process's rank (its share of the prompts and its random streams).
        world_size: ranks in the run.
    """
    pos = stage_at(cfg.stages, step)
    sampler = rollout_sampler(cfg, pos.stage, pos.step_in_stage)  # block size, threshold and length cap
    indices = stream_indices(num_rows, step * cfg.prompts_per_rollout, cfg.prompts_per_rollout, seed)
    k_steps = cfg.optimizer_steps_per_rollout
    peak = pos.stage.lr if pos.stage.lr is not None else cfg.lr
    total_opt, warmup = cfg.total_rollout_steps * k_steps, cfg.warmup_rollout_steps * k_steps
    total = cfg.total_rollout_steps
    stage_end = step + 1 == total or pos.index != stage_at(cfg.stages, step + 1).index
    fa = cfg.future_aware
    weight = ramp_weight(step, fa.weight, fa.ramp_steps, fa.ramp_shape) if cfg.target == "future_aware" else None
    return StepPlan(
        step=step,
        position=pos,
        block_size=sampler.block_size,
        length_cap=sampler.max_new_tokens,
        sampler=sampler if cfg.objective == "opd" else None,
        prompt_indices=tuple(indices[rank::world_size]),
        lrs=tuple(learning_rate(step * k_steps + k, total_opt, warmup, peak, cfg.min_lr) for k in range(k_steps)),
        target_weight=weight,
        rollout_seed=step_seed(seed, step, ROLLOUT, rank),
        selection_seed=step_seed(seed, step, SELECTION, rank),
        order_seed=step_seed(seed, step, ORDER, rank),
        checkpoint_after=(step + 1) % cfg.checkpoint_every == 0 or stage_end,
    )
