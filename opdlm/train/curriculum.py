"""The rollout-length curriculum (METHOD §5) and where a global rollout step falls among the stages."""

from __future__ import annotations

import math
from dataclasses import dataclass

from opdlm.config.sampler import SamplerConfig
from opdlm.config.train import CurriculumStage, LengthSchedule, TrainConfig
from opdlm.errors import ConfigError


def ramp_fraction(step: int, ramp_steps: int, shape: str) -> float:
    """Fraction of the ramp done at ``step``: cos ``1 - cos(pi/2 * t)`` or linear ``t``, ``t = min(step/ramp, 1)``."""
    t = 1.0 if ramp_steps <= 0 else min(max(step, 0) / ramp_steps, 1.0)
    if t >= 1.0:  # exact: cos(pi/2) is 6e-17 in floating point, and the cap must land on `end`
        return 1.0
    if shape == "cos":
        return 1.0 - math.cos(math.pi / 2 * t)
    if shape == "linear":
        return t
    raise ValueError(f"ramp shape must be 'cos' or 'linear', got {shape!r}")


def length_cap(schedule: LengthSchedule, step: int, block_size: int) -> int:
    """``max(B, round((start + (end - start) * frac) / B) * B)``: the cap at rollout ``step`` of a stage."""
    frac = ramp_fraction(step, schedule.ramp_steps, schedule.shape)
    raw = schedule.start + (schedule.end - schedule.start) * frac
    return max(block_size, round(raw / block_size) * block_size)


def rollout_sampler(cfg: TrainConfig, stage: CurriculumStage, step_in_stage: int) -> SamplerConfig:
    """The rollout sampler of ``stage`` at its rollout step ``step_in_stage`` (the one place it is derived).

    ``cfg.rollout`` with the stage's block size (:meth:`TrainConfig.stage_block_size`: the stage's
    own, else ``convert.block_size``) and threshold, and ``max_new_tokens`` the stage's length cap
    there (:func:`length_cap`); a row's domain cap may lower it further (:func:`domain_cap`).
    """
    block_size = cfg.stage_block_size(stage)
    cap = length_cap(stage.length, step_in_stage, block_size)
    return cfg.rollout.with_overrides(block_size=block_size, threshold=stage.threshold, max_new_tokens=cap)


def domain_cap(stage_cap: int, domain: str, domain_caps: dict[str, int]) -> int:
    """The stage cap, lowered by the row's per-domain cap when the stage sets one."""
    return min(stage_cap, domain_caps[domain]) if domain in domain_caps else stage_cap


@dataclass(frozen=True)
class StagePosition:
    """Where a global rollout step falls: the stage, its index, and the step counted inside it."""

    stage: CurriculumStage
    index: int
    step_in_stage: int


def stage_at(stages: list[CurriculumStage], rollout_step: int) -> StagePosition:
    """The stage of 0-based global ``rollout_step`` (stages run back to back)."""
    offset = 0
    for i, stage in enumerate(stages):
        if rollout_step < offset + stage.rollout_steps:
            return StagePosition(stage, i, rollout_step - offset)
        offset += stage.rollout_steps
    raise ValueError(f"rollout step {rollout_step} is past the curriculum's {offset} steps")


def stage_end_step(stages, until_stage: str | None) -> int:
    """Global rollout step at which stage ``until_stage`` ends (the whole curriculum for None).

    Raises:
        ConfigError: ``until_stage`` names no stage (the message lists the valid names).
    """
    if until_stage is None:
        return sum(s.rollout_steps for s in stages)
    end = 0
    for stage in stages:
        end += stage.rollout_steps
        if stage.name == until_stage:
            return end
    names = ", ".join(s.name for s in stages)
    raise ConfigError(f"until_stage {until_stage!r} is not a curriculum stage; valid stages: {names}")


def last_completed_stage(stages, rollout_step: int) -> str | None:
    """Name of the last stage whose every rollout step is done after ``rollout_step`` steps (None if none)."""
    done, end = None, 0
    for stage in stages:
        end += stage.rollout_steps
        if end <= rollout_step:
            done = stage.name
    return done
