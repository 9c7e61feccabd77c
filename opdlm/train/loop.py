"""The training loop: one explicit sequence of small named steps per rollout batch (METHOD §4).

    for each rollout step:
        collect_episodes   rollouts with the student (opd) or ground-truth responses (mdm_sft)
        select_rows        one state per block (or all rounds), loss mask, skip empty rollouts
        optimise           per optimizer step: teacher targets -> student forward -> forward KL
                           (or masked CE) -> backward over micro-batches -> clip -> AdamW
                           (:mod:`opdlm.train.optimise`)
        log, checkpoint    metric loggers; atomic checkpoints (:mod:`opdlm.train.saving`)

:func:`train` is the entry point the CLI and the pipeline call; ``until_stage`` stops it after a
curriculum stage (checkpointed, exported, ``train_summary.json`` written) so that a pipeline can run
one stage per task, each call resuming the same run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from opdlm.config.recipe import Recipe
from opdlm.errors import OpdlmError
from opdlm.train import distributed
from opdlm.train.batch import TrainingRows, make_rows, pad_step_maps, right_pad
from opdlm.train.checkpoint import export_model
from opdlm.train.curriculum import StagePosition, domain_cap, length_cap, stage_at, stage_end_step
from opdlm.train.data import stream_indices
from opdlm.train.flops import FLOPS_KEYS, ModelShape, rollout_flops
from opdlm.train.loss_mask import response_loss_mask
from opdlm.train.mdm import random_block_mask, response_tokens
from opdlm.train.metrics import ConsoleLogger, JsonlLogger, MetricLogger, MultiLogger
from opdlm.train.optimise import optimise
from opdlm.train.rollout import Episodes, encode_rows, rollout
from opdlm.train.saving import SUMMARY_FILE, checkpoint, final_checkpoint, write_summary
from opdlm.train.setup import RunContext, setup_run
from opdlm.train.states import select_states

__all__ = ["SUMMARY_FILE", "train", "train_step"]


def stage_sampler(ctx: RunContext, pos: StagePosition):
    """The rollout sampler config of a stage (block size and threshold overrides applied)."""
    return ctx.cfg.rollout.with_overrides(block_size=ctx.cfg.stage_block_size(pos.stage), threshold=pos.stage.threshold)


def collect_episodes(ctx: RunContext, pos: StagePosition, step: int) -> tuple[Episodes, int]:
    """This step's prompts and their responses; returns ``(episodes, stage_length_cap)``."""
    cfg, tok = ctx.cfg, ctx.student.tokenizer
    block_size = ctx.cfg.stage_block_size(pos.stage)
    cap = length_cap(pos.stage.length, pos.step_in_stage, block_size)
    indices = stream_indices(len(ctx.rows), step * cfg.prompts_per_rollout, cfg.prompts_per_rollout, ctx.seed)
    rows = [ctx.rows[i] for i in indices[ctx.rank :: ctx.world_size]]
    prompts, kept = encode_rows(tok, rows, cfg.math_suffix, cfg.max_prompt_tokens, ctx.student.meta.enable_thinking)
    ctx.counters.skipped_prompts += len(rows) - len(kept)
    rows = [rows[i] for i in kept]
    caps = [domain_cap(cap, r.domain, pos.stage.domain_caps) for r in rows]
    if cfg.objective == "mdm_sft":
        eos = ctx.student.meta.eos_token_ids[0]
        pairs = [(p, response_tokens(tok, r.response, eos, c)) for p, r, c in zip(prompts, rows, caps) if r.response]
        ctx.counters.skipped_prompts += len(prompts) - len(pairs)
        resp = [r for _, r in pairs]
        finished = [bool(r) and r[-1] in ctx.student.meta.eos_token_ids for r in resp]
        return Episodes([p for p, _ in pairs], resp, [[] for _ in pairs], finished, [0] * len(pairs)), cap
    if not prompts:
        return Episodes([], [], [], [], []), cap
    ctx.student.model.eval()
    with ctx.stepper.rollout_context(), ctx.autocast():
        episodes = rollout(ctx.student, prompts, caps, stage_sampler(ctx, pos), ctx.generator(step, 1, ctx.device))
    return episodes, cap


def select_rows(ctx: RunContext, episodes: Episodes, block_size: int, step: int) -> tuple[TrainingRows | None, int]:
    """States, loss mask and rows; returns ``(rows, skipped_rollouts)`` (rows None when nothing is left)."""
    if not episodes.responses:
        return None, 0
    meta = ctx.student.meta
    response_BL, lengths_B = right_pad(episodes.responses, meta.pad_token_id, max(max(map(len, episodes.responses)), 1))
    loss_mask_BL = response_loss_mask(response_BL, lengths_B, meta.eos_token_ids, ctx.cfg.exclude_eos_from_loss)
    gen = ctx.generator(step, 2)
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


def step_flops(ctx: RunContext, episodes: Episodes, block_size: int, stats: dict) -> dict[str, float]:
    """This rank's FLOPs of the step by part (:mod:`opdlm.train.flops`): rollout, teacher, student."""
    rollout = 0.0
    if any(episodes.num_forwards):
        meta = ctx.student.meta
        rollout = rollout_flops(
            ModelShape.from_config(ctx.student.model.config),
            [len(p) for p in episodes.prompts],
            episodes.step_maps,
            [len(r) for r in episodes.responses],
            episodes.num_forwards,
            block_size,
            meta.prompt_attention,
            meta.logit_shift,
        )
    return {
        "rollout": rollout,
        "teacher": stats.get("_flops_teacher", 0.0),
        "student": stats.get("_flops_student", 0.0),
    }


def train_step(ctx: RunContext, step: int) -> dict:
    """One rollout step: collect, select, optimise; returns the step's metrics."""
    pos = stage_at(ctx.cfg.stages, step)
    block_size = ctx.cfg.stage_block_size(pos.stage)
    episodes, cap = collect_episodes(ctx, pos, step)
    rows, skipped = select_rows(ctx, episodes, block_size, step)
    stats = optimise(ctx, rows, pos, step, block_size)
    c = ctx.counters
    # counters are global: summed over the ranks (each rank rolls out its share of the prompts)
    rollout_tokens, skipped, n_eps, n_finished = distributed.all_reduce_sum(
        [sum(map(len, episodes.responses)), skipped, len(episodes.responses), sum(episodes.finished)]
    )
    c.rollout_step = step + 1
    c.skipped_rollouts += skipped
    c.rollout_tokens += rollout_tokens
    c.train_tokens += rollout_tokens
    parts = step_flops(ctx, episodes, block_size, stats)
    f_rollout, f_teacher, f_student = distributed.all_reduce_sum([parts[k] for k in FLOPS_KEYS])
    flops = f_rollout + f_teacher + f_student
    c.flops_rollout += f_rollout
    c.flops_teacher += f_teacher
    c.flops_student += f_student
    c.flops += flops
    metrics = {k: v for k, v in stats.items() if not k.startswith("_")}
    metrics.update(
        {
            "stage": pos.index,
            "stage_name": pos.stage.name,
            "length_cap": cap,
            "block_size": block_size,
            "rollout_tokens": rollout_tokens,
            "rollouts": n_eps,
            "mean_response_tokens": rollout_tokens / max(n_eps, 1),
            "tokens_per_step": episodes.tokens_per_step,
            "eos_rate": n_finished / max(n_eps, 1),
            "skipped_rollouts": skipped,
            "cumulative_skipped_rollouts": c.skipped_rollouts,
            "cumulative_train_tokens": c.train_tokens,
            "flops": flops,
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


def default_loggers(ctx: RunContext, console: bool = True) -> MetricLogger:
    resume_after = ctx.counters.rollout_step - 1 if ctx.resumed_from is not None else None
    loggers: list[MetricLogger] = [JsonlLogger(ctx.out / "metrics.jsonl", resume_after=resume_after)]
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
    loggers: list[MetricLogger] | None = None,
    console: bool = True,
) -> Path:
    """Train a block-diffusion student by OPD (or the mdm_sft baseline) and return ``out_dir``.

    Re-running with the same arguments resumes from the newest checkpoint. ``out_dir`` ends up an
    ordinary converted model directory (``opdlm generate --model OUT``) plus ``checkpoints/``,
    ``metrics.jsonl``, ``params.json``, ``run.json`` and ``train_summary.json``.

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
        loggers: extra metric loggers (for example MLflow, from outside the library).
        console: print one progress line per step.

    Raises:
        ConfigError: ``until_stage`` is not a stage of the recipe.
    """
    end = stage_end_step(recipe.train.stages, until_stage)  # validate before touching the folder
    with _process_settings():
        return _train(recipe, out_dir, teacher, student, data, end, until_stage, loggers, console)


@contextlib.contextmanager
def _process_settings():
    """Give back torch's thread count and deterministic mode (setup_run sets them) when training ends."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _check_trained_something(ctx: RunContext, end: int) -> None:
    """A finished run that took no optimizer step trained nothing: fail rather than export the start weights."""
    c = ctx.counters
    if end == ctx.cfg.total_rollout_steps and c.optimizer_steps == 0:
        raise OpdlmError(
            f"the run took no optimizer step in its {end} rollout steps: {c.skipped_prompts} prompts were skipped "
            f"(over train.max_prompt_tokens or without a response) and {c.skipped_rollouts} rollouts had no token to "
            "learn from; nothing was exported (check the data and train.max_prompt_tokens)"
        )


def _train(recipe, out_dir, teacher, student, data, end, until_stage, loggers, console) -> Path:
    ctx = setup_run(recipe, out_dir, teacher, student, data)
    total = ctx.cfg.total_rollout_steps
    main_rank = ctx.rank == 0
    logger = MultiLogger(([default_loggers(ctx, console)] if main_rank else []) + list(loggers or []))
    logger.log_params(
        {
            "objective": ctx.cfg.objective,
            "stages": [s.name for s in ctx.cfg.stages],
            "total_rollout_steps": total,
            "out": str(ctx.out),
            "resumed_from": str(ctx.resumed_from) if ctx.resumed_from else None,
            "until_stage": until_stage,
            "train": ctx.cfg.model_dump(mode="json"),
            "seed": ctx.seed,
        }
    )
    try:
        for step in range(ctx.counters.rollout_step, end):
            metrics = train_step(ctx, step)
            logger.log(metrics, step)
            stage_end = (
                step + 1 == total or stage_at(ctx.cfg.stages, step).index != stage_at(ctx.cfg.stages, step + 1).index
            )
            if (step + 1) % ctx.cfg.checkpoint_every == 0 or stage_end:
                checkpoint(ctx, metrics["block_size"])
        _check_trained_something(ctx, end)
        last = final_checkpoint(ctx)
        if main_rank:
            export_model(last, ctx.out)
            write_summary(ctx)
    finally:
        logger.close()
    return ctx.out
