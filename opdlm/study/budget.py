"""Turning a training-token budget into rollout steps, the way the trainer counts tokens.

The trainer adds each rollout step's response tokens to ``cumulative_train_tokens`` (OPD: the
student's rollout tokens; mdm_sft: the ground-truth response ids with their EOS, cut at the length
cap). Which prompts a step draws depends only on ``(seed, step)`` and the length cap only on the
step's place in the curriculum, so:

* mdm_sft's tokens per step are known exactly before training (:func:`mdm_step_tokens`);
* OPD's are bounded by the length caps of the step's prompts and are estimated as that bound times
  a fill ratio (:func:`opd_step_tokens`); the run's measured tokens are what the study reports.

An arm trains for the first ``S`` rollout steps of the recipe's curriculum (the last stage extended
when ``S`` runs past it): :func:`truncate_stages`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from opdlm.config.train import CurriculumStage, TrainConfig
from opdlm.data.schema import Row
from opdlm.errors import ConfigError
from opdlm.train.curriculum import StagePosition, domain_cap, rollout_sampler
from opdlm.train.data import stream_indices
from opdlm.train.mdm import response_tokens
from opdlm.train.rollout import encode_rows


def steps_for_budget(step_tokens: Iterable[float], budget: float, max_steps: int) -> tuple[int, float]:
    """The fewest leading steps whose tokens add up to at least ``budget``.

    Args:
        step_tokens: tokens of rollout step 0, 1, 2, ... (may be endless).
        budget: tokens wanted (> 0).
        max_steps: give up past this many steps.

    Returns:
        ``(steps, tokens)``: the step count and the tokens those steps add up to.

    Raises:
        ConfigError: ``max_steps`` steps do not reach the budget (e.g. every step yields 0 tokens).
    """
    total = 0.0
    for steps, tokens in enumerate(step_tokens, start=1):
        total += tokens
        if total >= budget:
            return steps, total
        if steps >= max_steps:
            break
    raise ConfigError(
        f"a budget of {budget:,.0f} tokens needs more than {max_steps} rollout steps (reached {total:,.0f})"
    )


def position_at(stages: list[CurriculumStage], step: int) -> StagePosition:
    """Where 0-based ``step`` falls in the curriculum, the last stage continuing past its end."""
    offset = 0
    for i, stage in enumerate(stages):
        if step < offset + stage.rollout_steps or i == len(stages) - 1:
            return StagePosition(stage, i, step - offset)
        offset += stage.rollout_steps
    raise ConfigError("the curriculum has no stages")


def truncate_stages(stages: list[CurriculumStage], steps: int) -> list[CurriculumStage]:
    """The curriculum's first ``steps`` rollout steps as stages (later stages dropped, the last cut or extended)."""
    if steps < 1:
        raise ConfigError(f"an arm needs at least 1 rollout step (got {steps})")
    out, done = [], 0
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        take = steps - done if last else min(stage.rollout_steps, steps - done)
        out.append(stage.model_copy(update={"rollout_steps": take}))
        done += take
        if done >= steps:
            break
    return out


def _step_rows(cfg: TrainConfig, rows: list[Row], tokenizer, seed: int, step: int, enable_thinking: bool) -> list[Row]:
    """The rows rollout step ``step`` draws, minus those whose prompt the trainer would skip."""
    indices = stream_indices(len(rows), step * cfg.prompts_per_rollout, cfg.prompts_per_rollout, seed)
    drawn = [rows[i] for i in indices]
    _, kept = encode_rows(tokenizer, drawn, cfg.math_suffix, cfg.max_prompt_tokens, enable_thinking)
    return [drawn[i] for i in kept]


def _step_caps(cfg: TrainConfig, step: int, drawn: list[Row]) -> list[int]:
    pos = position_at(cfg.stages, step)
    cap = rollout_sampler(cfg, pos.stage, pos.step_in_stage).max_new_tokens
    return [domain_cap(cap, r.domain, pos.stage.domain_caps) for r in drawn]


def mdm_step_tokens(
    cfg: TrainConfig, rows: list[Row], tokenizer, eos_id: int, seed: int, enable_thinking: bool = False
) -> Iterator[int]:
    """Exact training tokens of each mdm_sft rollout step (ground truth + EOS, cut at the cap)."""
    full_length: dict[str, int] = {}

    def length(row: Row, cap: int) -> int:
        if row.question not in full_length:  # the uncut length (+ EOS) of a row, tokenised once
            full_length[row.question] = len(response_tokens(tokenizer, row.response or "", eos_id, 1 << 30))
        return min(full_length[row.question], cap)

    step = 0
    while True:
        drawn = [r for r in _step_rows(cfg, rows, tokenizer, seed, step, enable_thinking) if r.response]
        yield sum(length(r, c) for r, c in zip(drawn, _step_caps(cfg, step, drawn)))
        step += 1


def opd_step_tokens(
    cfg: TrainConfig, rows: list[Row], tokenizer, seed: int, fill: float, enable_thinking: bool = False
) -> Iterator[float]:
    """Estimated OPD rollout tokens of each step: ``fill`` x the sum of its prompts' length caps."""
    step = 0
    while True:
        drawn = _step_rows(cfg, rows, tokenizer, seed, step, enable_thinking)
        yield fill * sum(_step_caps(cfg, step, drawn))
        step += 1


def plan_steps(
    cfg: TrainConfig,
    rows: list[Row],
    tokenizer,
    eos_id: int,
    seed: int,
    budget: float,
    fill: float,
    max_steps: int = 100_000,
    enable_thinking: bool = False,
) -> tuple[int, float]:
    """``(rollout_steps, planned_tokens)`` for an arm of ``cfg.objective`` to spend ``budget`` tokens.

    ``enable_thinking``: the recipe's ``convert.enable_thinking`` (prompt lengths decide which rows are kept).
    """
    if cfg.objective == "mdm_sft":
        tokens: Iterator[float] = mdm_step_tokens(cfg, rows, tokenizer, eos_id, seed, enable_thinking)
    else:
        tokens = opd_step_tokens(cfg, rows, tokenizer, seed, fill, enable_thinking)
    return steps_for_budget(tokens, budget, max_steps)
