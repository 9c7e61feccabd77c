"""The training loop: one explicit sequence of small named steps per rollout batch (METHOD §4).

    for each rollout step:
        plan_step          what the step will do, decided once: stage, block size, length cap,
                           sampler, prompts, learning rates, seeds (:mod:`opdlm.train.plan`)
        collect_episodes   rollouts with the student (opd) or ground-truth responses (mdm_sft)
        select_rows        one state per block (or all rounds), loss mask, skip empty rollouts
        optimise           per optimizer step: teacher targets -> student forward -> forward KL
                           (or masked CE) -> backward over micro-batches -> clip -> AdamW
                           (:mod:`opdlm.train.optimise`)
        advance            the counters after the step: the one place where they change
        log, checkpoint    metric loggers; atomic checkpoints (:mod:`opdlm.train.saving`)

The step functions read the frozen :class:`~opdlm.train.setup.RunContext` and the step's
:class:`~opdlm.train.plan.StepPlan` and return what they did; nothing writes into a shared context.
:func:`train` is the entry point the CLI and the pipeline call; ``until_stage`` stops it after a
curriculum stage (checkpointed, exported, ``train_summary.json`` written) so that a pipeline can run
one stage per task, each call resuming the same run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from opdlm.config.recipe import Recipe
from opdlm.errors import OpdlmError
from opdlm.train import distributed
from opdlm.train.batch import TrainingRows, make_rows, pad_step_maps, right_pad
from opdlm.train.checkpoint import export_model
from opdlm.train.curriculum import domain_cap, stage_end_step
from opdlm.train.flops import ModelShape, rollout_flops
from opdlm.train.folder import TrainingFolder
from opdlm.train.loss_mask import response_loss_mask
from opdlm.train.mdm import random_block_mask, response_tokens
from opdlm.train.metrics import ConsoleLogger, JsonlLogger, MetricLogger, MultiLogger
from opdlm.train.optimise import OptimiseResult, optimise
from opdlm.train.plan import StepPlan, plan_step, seeded_generator
from opdlm.train.rollout import Episodes, encode_rows, rollout
from opdlm.train.saving import checkpoint, final_checkpoint, write_summary
from opdlm.train.setup import Counters, Resume, RunContext, setup_run
from opdlm.train.states import select_states

__all__ = ["train", "train_step"]


def collect_episodes(ctx: RunContext, plan: StepPlan) -> tuple[Episodes, int]:
    """This step's prompts and their responses; returns ``(episodes, skipped_prompts)``.

    A prompt is skipped when it is over ``train.max_prompt_tokens`` (or, for ``mdm_sft``, has no response).
    """
    cfg, tok, meta = ctx.cfg, ctx.student.tokenizer, ctx.student.meta
    rows = [ctx.rows[i] for i in plan.prompt_indices]
    prompts, kept = encode_rows(tok, rows, cfg.math_suffix, cfg.max_prompt_tokens, meta.enable_thinking)
    skipped = len(rows) - len(kept)
    rows = [rows[i] for i in kept]
    caps = [domain_cap(plan.length_cap, r.domain, plan.position.stage.domain_caps) for r in rows]
    if cfg.objective == "mdm_sft":
        eos = meta.eos_token_ids[0]
        pairs = [(p, response_tokens(tok, r.response, eos, c)) for p, r, c in zip(prompts, rows, caps) if r.response]
        skipped += len(prompts) - len(pairs)
        resp = [r for _, r in pairs]
        finished = [bool(r) and r[-1] in meta.eos_token_ids for r in resp]
        return Episodes([p for p, _ in pairs], resp, [[] for _ in pairs], finished, [0] * len(pairs)), skipped
    if not prompts:
        return Episodes([], [], [], [], []), skipped
    ctx.student.model.eval()
    with ctx.stepper.rollout_context(), ctx.autocast():
        episodes = rollout(ctx.student, prompts, caps, plan.sampler, seeded_generator(plan.rollout_seed, ctx.device))
    return episodes, skipped


def select_rows(ctx: RunContext, episodes: Episodes, plan: StepPlan) -> tuple[TrainingRows | None, int]:
    """States, loss mask and rows; returns ``(rows, skipped_rollouts)`` (rows None when nothing is left)."""
    if not episodes.responses:
        return None, 0
    meta, block_size = ctx.student.meta, plan.block_size
    response_BL, lengths_B = right_pad(episodes.responses, meta.pad_token_id, max(max(map(len, episodes.responses)), 1))
    loss_mask_BL = response_loss_mask(response_BL, lengths_B, meta.eos_token_ids, ctx.cfg.exclude_eos_from_loss)
    gen = seeded_generator(plan.selection_seed)
    if ctx.cfg.objective == "mdm_sft":
        masked_RL = random_block_mask(lengths_B, response_BL.shape[1], block_size, ctx.cfg.mdm_min_mask_ratio, gen)
        source_R = torch.arange(len(episodes.responses))
    else:
        step_map_BL = pad_step_maps(episodes.step_maps, response_BL.shape[1])
        masked_RL, source_R = select_states(step_map_BL, lengths_B, block_size, ctx.cfg.state_selection, gen)
    has_loss_R = (masked_RL & loss_mask_BL[source_R]).any(-1)
    used = set(source_R[has_loss_R].tolist())
    skipped = len(episodes.responses) - len(used)  # empty or EOS-only rollouts: counted, never a crash
    if not has_loss_R.any():
        return None, skipped
    rows = make_rows(
        episodes.prompts,
        episodes.responses,
        source_R[has_loss_R],
        masked_RL[has_loss_R],
        loss_mask_BL,
        meta.pad_token_id,
        block_size,
    )
    return rows, skipped


def episode_flops(ctx: RunContext, episodes: Episodes, block_size: int) -> float:
    """FLOPs of every sampler forward of this rank's rollouts (:func:`opdlm.train.flops.rollout_flops`; 0 for
    mdm_sft)."""
    if not any(episodes.num_forwards):
        return 0.0
    meta = ctx.student.meta
    return rollout_flops(
        ModelShape.from_config(ctx.student.model.config),
        [len(p) for p in episodes.prompts],
        episodes.step_maps,
        [len(r) for r in episodes.responses],
        episodes.num_forwards,
        block_size,
        meta.prompt_attention,
        meta.logit_shift,
    )


@dataclass(frozen=True)
class StepOutcome:
    """What one rollout step did; the counters of every rank are summed over the ranks.

    Attributes:
        plan: the step's plan.
        optimised: what its optimizer steps did (this rank's share of losses and tokens).
        rollout_tokens: response tokens of the step's rollouts (or ground-truth responses).
        rollouts: episodes.
        finished: episodes that ended with EOS.
        skipped_rollouts: episodes with no token to learn from.
        skipped_prompts: prompts skipped before rollout (too long, or no response for ``mdm_sft``).
        tokens_per_step: this rank's rollout tokens per denoising step.
        flops_rollout: FLOPs of the step's sampler forwards (:func:`episode_flops`).
        flops_teacher: FLOPs of everything the target ran (:func:`opdlm.train.optimise.teacher_flops`).
        flops_student: FLOPs of the student's training forwards and backwards.
    """

    plan: StepPlan
    optimised: OptimiseResult
    rollout_tokens: int
    rollouts: int
    finished: int
    skipped_rollouts: int
    skipped_prompts: int
    tokens_per_step: float
    flops_rollout: float
    flops_teacher: float
    flops_student: float

    @property
    def flops(self) -> float:
        """The step's FLOPs, all parts (:mod:`opdlm.train.flops`)."""
        return self.flops_rollout + self.flops_teacher + self.flops_student


def train_step(ctx: RunContext, plan: StepPlan) -> StepOutcome:
    """One rollout step: collect, select, optimise; returns what it did (the loop updates the counters)."""
    episodes, skipped_prompts = collect_episodes(ctx, plan)
    rows, skipped_rollouts = select_rows(ctx, episodes, plan)
    optimised = optimise(ctx, rows, plan)
    # counters are global: summed over the ranks (each rank rolls out its share of the prompts)
    rollout_tokens, skipped_rollouts, skipped_prompts, n_eps, n_finished = distributed.all_reduce_sum(
        [
            sum(map(len, episodes.responses)),
            skipped_rollouts,
            skipped_prompts,
            len(episodes.responses),
            sum(episodes.finished),
        ]
    )
    f_rollout, f_teacher, f_student = distributed.all_reduce_sum(
        [episode_flops(ctx, episodes, plan.block_size), optimised.teacher_flops, optimised.student_flops]
    )
    return StepOutcome(
        plan,
        optimised,
        rollout_tokens,
        n_eps,
        n_finished,
        skipped_rollouts,
        skipped_prompts,
        episodes.tokens_per_step,
        f_rollout,
        f_teacher,
        f_student,
    )


def advance(c: Counters, outcome: StepOutcome) -> Counters:
    """The counters after ``outcome``'s step: the one place where they change."""
    return replace(
        c,
        rollout_step=outcome.plan.step + 1,
        optimizer_steps=c.optimizer_steps + outcome.optimised.optimizer_steps,
        rollout_tokens=c.rollout_tokens + outcome.rollout_tokens,
        train_tokens=c.train_tokens + outcome.rollout_tokens,
        flops=c.flops + outcome.flops,
        flops_rollout=c.flops_rollout + outcome.flops_rollout,
        flops_teacher=c.flops_teacher + outcome.flops_teacher,
        flops_student=c.flops_student + outcome.flops_student,
        skipped_rollouts=c.skipped_rollouts + outcome.skipped_rollouts,
        skipped_prompts=c.skipped_prompts + outcome.skipped_prompts,
    )


def step_metrics(outcome: StepOutcome, c: Counters) -> dict:
    """The metrics line of a step (``c``: the counters after it)."""
    plan, n_eps = outcome.plan, outcome.rollouts
    metrics = outcome.optimised.metrics()
    if plan.target_weight is not None and outcome.optimised.optimizer_steps:
        # future-aware: this step's lambda, and this rank's loss positions whose target it changed
        metrics["future_aware_weight"] = plan.target_weight
        metrics["future_aware_corrected"] = outcome.optimised.corrected
    metrics.update(
        {
            "stage": plan.position.index,
            "stage_name": plan.position.stage.name,
            "length_cap": plan.length_cap,
            "block_size": plan.block_size,
            "rollout_tokens": outcome.rollout_tokens,
            "rollouts": n_eps,
            "mean_response_tokens": outcome.rollout_tokens / max(n_eps, 1),
            "tokens_per_step": outcome.tokens_per_step,
            "eos_rate": outcome.finished / max(n_eps, 1),
            "skipped_rollouts": outcome.skipped_rollouts,
            "cumulative_skipped_rollouts": c.skipped_rollouts,
            "cumulative_train_tokens": c.train_tokens,
            "flops": outcome.flops,
            "cumulative_flops": c.flops,
            # cumulative, by part (what the study plots accuracy against)
            "flops_rollout": c.flops_rollout,
            "flops_teacher": c.flops_teacher,
            "flops_student": c.flops_student,
            "flops_total": c.flops,
            "optimizer_step": c.optimizer_steps,
        }
    )
    metrics.setdefault("loss_tokens", 0)
    return metrics


def default_loggers(ctx: RunContext, resume: Resume, console: bool = True) -> MetricLogger:
    resume_after = resume.counters.rollout_step - 1 if resume.checkpoint is not None else None
    loggers: list[MetricLogger] = [JsonlLogger(TrainingFolder(ctx.out), resume_after=resume_after)]
    if console:
        loggers.append(ConsoleLogger(ctx.cfg.total_rollout_steps))
    return MultiLogger(loggers)


def train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    teacher: str | None = None,
    student: str | None = None,
    data: str | None = None,
    until_stage: str | None = None,
    console: bool = True,
) -> Path:
    """Train a block-diffusion student by OPD (or the mdm_sft baseline) and return ``out_dir``.

    Re-running with the same arguments resumes from the newest checkpoint. ``out_dir`` ends up an
    ordinary converted model directory (``opdlm generate --model OUT``) plus the files of a
    training folder (:mod:`opdlm.train.folder`: checkpoints, ``metrics.jsonl``, the summary). Rank 0
    alone writes ``metrics.jsonl``: the one channel a tracking service reads the run from.

    Args:
        recipe: validated recipe (its ``train`` section drives everything here).
        out_dir: output folder (created; resumed when it holds this recipe's run).
        teacher: teacher source overriding ``recipe.teacher``.
        student: converted student directory to start from (default: convert the teacher into
            ``OUT/converted``).
        data: JSONL of rows overriding ``recipe.data``.
        until_stage: stop after this curriculum stage (inclusive), checkpointed and exported; a
            later call with the next stage's name (or None) on the same ``out_dir`` continues the
            same run. None runs to the end of the curriculum.
        console: print one progress line per step.

    Raises:
        ConfigError: ``until_stage`` is not a stage of the recipe.
    """
    end = stage_end_step(recipe.train.stages, until_stage)  # validate before touching the folder
    with _process_settings():
        return _train(recipe, out_dir, teacher, student, data, end, until_stage, console)


@contextlib.contextmanager
def _process_settings():
    """Give back torch's thread count and deterministic mode (setup_run sets them) when training ends."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _check_trained_something(ctx: RunContext, c: Counters, end: int) -> None:
    """A finished run that took no optimizer step trained nothing: fail rather than export the start weights."""
    if end == ctx.cfg.total_rollout_steps and c.optimizer_steps == 0:
        raise OpdlmError(
            f"the run took no optimizer step in its {end} rollout steps: {c.skipped_prompts} prompts were skipped "
            f"(over train.max_prompt_tokens or without a response) and {c.skipped_rollouts} rollouts had no token to "
            "learn from; nothing was exported (check the data and train.max_prompt_tokens)"
        )


def _train(recipe, out_dir, teacher, student, data, end, until_stage, console) -> Path:
    ctx, resume = setup_run(recipe, out_dir, teacher, student, data)
    total = ctx.cfg.total_rollout_steps
    main_rank = ctx.rank == 0
    logger = default_loggers(ctx, resume, console) if main_rank else MultiLogger([])
    logger.log_params(
        {
            "objective": ctx.cfg.objective,
            "stages": [s.name for s in ctx.cfg.stages],
            "total_rollout_steps": total,
            "out": str(ctx.out),
            "resumed_from": str(resume.checkpoint) if resume.checkpoint else None,
            "until_stage": until_stage,
            "train": ctx.cfg.model_dump(mode="json"),
            "seed": ctx.seed,
        }
    )
    counters, newest = resume.counters, resume.checkpoint
    try:
        for step in range(counters.rollout_step, end):
            plan = plan_step(ctx.cfg, step, len(ctx.rows), ctx.seed, ctx.rank, ctx.world_size)
            outcome = train_step(ctx, plan)
            counters = advance(counters, outcome)
            logger.log(step_metrics(outcome, counters), step)
            if plan.checkpoint_after:
                newest = checkpoint(ctx, counters, plan.block_size)
        _check_trained_something(ctx, counters, end)
        last = final_checkpoint(ctx, counters, newest)
        if main_rank:
            export_model(last, ctx.out)
            write_summary(ctx, counters)
    finally:
        logger.close()
    return ctx.out
