"""The training loop: one explicit sequence of small named steps per rollout batch (METHOD §4).

    for each rollout step:
        collect_episodes   rollouts with the student (opd) or ground-truth responses (mdm_sft)
        select_rows        one state per block (or all rounds), loss mask, skip empty rollouts
        optimise           per optimizer step: teacher targets -> student forward -> forward KL
                           (or masked CE) -> backward over micro-batches -> clip -> AdamW
        log, checkpoint

:func:`train` is the entry point the CLI and the pipeline call.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import torch

from opdlm.config.recipe import Recipe
from opdlm.errors import ConfigError
from opdlm.train import distributed
from opdlm.train.batch import TrainingRows, make_rows
from opdlm.train.checkpoint import export_model, save_checkpoint, step_dir_name, write_json
from opdlm.train.curriculum import StagePosition, domain_cap, length_cap, stage_at
from opdlm.train.data import stream_indices
from opdlm.train.kl import cross_entropy_chunked, forward_kl_chunked, num_chunks
from opdlm.train.loss_mask import response_loss_mask
from opdlm.train.mdm import random_block_mask, response_tokens
from opdlm.train.metrics import ConsoleLogger, JsonlLogger, MetricLogger, MultiLogger
from opdlm.train.rollout import Episodes, encode_rows, rollout
from opdlm.train.schedule import SCHEDULER_FILE, learning_rate, schedule_state
from opdlm.train.setup import RunContext, setup_run
from opdlm.train.states import select_states
from opdlm.train.student_forward import noisy_copy, student_hidden_states
from opdlm.train.targets import teacher_hidden_states

SUMMARY_FILE = "train_summary.json"


def _generator(ctx: RunContext, step: int, purpose: int, device: torch.device | None = None) -> torch.Generator:
    """A generator seeded by (seed, step, purpose): a resumed run draws the same numbers as an uninterrupted one."""
    g = torch.Generator(device=device or "cpu")
    return g.manual_seed((ctx.seed * 1_000_003 + step) * 8 + purpose + ctx.rank * 7_919)


def _autocast(ctx: RunContext):
    if ctx.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype)


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
    prompts, kept = encode_rows(tok, rows, cfg.math_suffix, cfg.max_prompt_tokens)
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
    with ctx.stepper.rollout_context(), _autocast(ctx):
        episodes = rollout(ctx.student, prompts, caps, stage_sampler(ctx, pos), _generator(ctx, step, 1, ctx.device))
    return episodes, cap


def select_rows(ctx: RunContext, episodes: Episodes, block_size: int, step: int) -> tuple[TrainingRows | None, int]:
    """States, loss mask and rows; returns ``(rows, skipped_rollouts)`` (rows None when nothing is left)."""
    if not episodes.responses:
        return None, 0
    meta = ctx.student.meta
    response_BL, lengths_B = _pad_responses(episodes.responses, meta.pad_token_id)
    loss_mask_BL = response_loss_mask(response_BL, lengths_B, meta.eos_token_ids, ctx.cfg.exclude_eos_from_loss)
    gen = _generator(ctx, step, 2)
    if ctx.cfg.objective == "mdm_sft":
        masked_RL = random_block_mask(lengths_B, response_BL.shape[1], block_size, ctx.cfg.mdm_min_mask_ratio, gen)
        source_R = torch.arange(len(episodes.responses))
    else:
        step_map_BL = _pad_step_maps(episodes.step_maps, response_BL.shape[1])
        masked_RL, source_R = select_states(step_map_BL, lengths_B, block_size, ctx.cfg.state_selection, gen)
    has_loss_R = (masked_RL & loss_mask_BL[source_R]).any(-1)
    used = set(source_R[has_loss_R].tolist())
    skipped = len(episodes.responses) - len(used)  # empty or EOS-only rollouts: counted, never a crash
    if not has_loss_R.any():
        return None, skipped
    rows = make_rows(
        episodes.prompts, episodes.responses, source_R[has_loss_R], masked_RL[has_loss_R], loss_mask_BL,
        meta.pad_token_id, block_size,
    )  # fmt: skip
    return rows, skipped


def _pad_responses(responses: list[list[int]], pad_id: int):
    from opdlm.train.batch import right_pad

    return right_pad(responses, pad_id, max(max(map(len, responses)), 1))


def _pad_step_maps(step_maps: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(step_maps), width), -1, dtype=torch.long)
    for i, sm in enumerate(step_maps):
        out[i, : len(sm)] = torch.tensor(sm, dtype=torch.long)
    return out


def microbatch_loss(ctx: RunContext, mb: TrainingRows, block_size: int) -> tuple[torch.Tensor, dict]:
    """Sum over the micro-batch's rows of each row's mean loss over its loss positions.

    Returns:
        ``(loss_sum, stats)``; stats hold per-token losses by position inside the block.
    """
    meta, model = ctx.student.meta, ctx.student.model
    noisy_BL = noisy_copy(mb.response_BL, mb.masked_BL, mb.lengths_B, meta.mask_token_id)
    row_N, col_N = mb.loss_BL.nonzero(as_tuple=True)
    # ranks must call the (ZeRO-3 sharded) output heads equally often: agree on the chunk count
    min_chunks = distributed.all_reduce_max(num_chunks(int(row_N.numel()), ctx.cfg.kl_chunk_size))
    with _autocast(ctx):
        hidden_BLH = student_hidden_states(
            model, mb.prompt_ids_BP, mb.prompt_lens_B, mb.response_BL, noisy_BL, block_size, meta.logit_shift,
            ctx.student.backend,
        )  # fmt: skip
        student_NH = hidden_BLH[row_N, col_N]
        if ctx.cfg.objective == "opd":
            teacher_NH = teacher_hidden_states(ctx.teacher, mb.prompt_ids_BP, mb.prompt_lens_B, mb.response_BL, ctx.teacher_backend)[row_N, col_N]
            top_k = ctx.cfg.kl_top_k if ctx.cfg.kl == "top_k" else None
            per_token_N = forward_kl_chunked(
                teacher_NH, student_NH, ctx.teacher.get_output_embeddings(), model.get_output_embeddings(), top_k,
                ctx.cfg.kl_chunk_size, min_chunks,
            )  # fmt: skip
        else:
            targets_N = mb.response_BL[row_N, col_N]
            per_token_N = cross_entropy_chunked(student_NH, model.get_output_embeddings(), targets_N, ctx.cfg.kl_chunk_size, min_chunks)
    n_rows = len(mb)
    count_B = torch.zeros(n_rows, device=per_token_N.device).index_add_(0, row_N, torch.ones_like(per_token_N))
    sum_B = torch.zeros(n_rows, device=per_token_N.device).index_add_(0, row_N, per_token_N)
    loss_sum = (sum_B / count_B.clamp(min=1)).sum()
    detached = per_token_N.detach()
    pos_N = col_N % block_size
    stats = {
        "by_pos_sum": torch.zeros(block_size, device=detached.device).index_add_(0, pos_N, detached).cpu(),
        "by_pos_count": torch.zeros(block_size, device=detached.device).index_add_(0, pos_N, torch.ones_like(detached)).cpu(),
        "tokens": int(row_N.numel()),
        "seq_tokens": int((mb.prompt_lens_B.sum() + 2 * mb.lengths_B.sum()).item()),
        "teacher_tokens": int((mb.prompt_lens_B.sum() + mb.lengths_B.sum()).item()),
    }
    return loss_sum, stats


def filler_rows(ctx: RunContext, block_size: int) -> TrainingRows:
    """One row (an EOS prompt, a block of EOS) whose loss is multiplied by zero.

    A rank with fewer micro-batches than another (or none at all: every rollout skipped) runs these
    so that all ranks make the same forward/backward calls, which DeepSpeed's collectives require.
    """
    eos = ctx.student.meta.eos_token_ids[0]
    ones = torch.ones((1, block_size), dtype=torch.bool)
    return make_rows([[eos]], [[eos] * block_size], torch.zeros(1, dtype=torch.long), ones, ones, ctx.student.meta.pad_token_id, block_size)


def optimise(ctx: RunContext, rows: TrainingRows | None, pos: StagePosition, step: int, block_size: int) -> dict:
    """Consume one batch of rows as ``optimizer_steps_per_rollout`` AdamW steps of gradient-accumulated micro-batches.

    ``rows`` is None when every rollout of this rank was skipped. Optimizer steps whose share of rows
    is empty on every rank are skipped (the learning-rate schedule still advances).
    """
    cfg = ctx.cfg
    k_steps = cfg.optimizer_steps_per_rollout
    total_opt = cfg.total_rollout_steps * k_steps
    peak = pos.stage.lr if pos.stage.lr is not None else cfg.lr
    n_rows = len(rows) if rows is not None else 0
    order = torch.randperm(n_rows, generator=_generator(ctx, step, 3))
    ctx.student.model.train()
    losses, norms, lr = [], [], 0.0
    by_pos_sum, by_pos_count = torch.zeros(block_size), torch.zeros(block_size)
    seq_tokens = teacher_tokens = 0
    for k, group in enumerate(torch.tensor_split(order, k_steps)):
        micro = list(group.split(cfg.micro_batch_size)) if len(group) else []
        n_micro = distributed.all_reduce_max(len(micro))
        if n_micro == 0:
            continue
        group_loss = 0.0
        for i in range(n_micro):
            last = i == n_micro - 1
            if i >= len(micro):  # this rank ran out: a zero-weighted filler keeps the collectives in step
                filler = rows.select(micro[0], block_size) if micro else filler_rows(ctx, block_size)
                loss_sum, _ = microbatch_loss(ctx, filler.to(ctx.device), block_size)
                ctx.stepper.backward(loss_sum * 0.0, last)
                continue
            mb = rows.select(micro[i], block_size).to(ctx.device)
            loss_sum, stats = microbatch_loss(ctx, mb, block_size)
            ctx.stepper.backward(loss_sum / len(group), last)
            group_loss += float(loss_sum.detach()) / len(group)
            by_pos_sum += stats["by_pos_sum"]
            by_pos_count += stats["by_pos_count"]
            seq_tokens += stats["seq_tokens"]
            teacher_tokens += stats["teacher_tokens"]
        lr = learning_rate(step * k_steps + k, total_opt, cfg.warmup_rollout_steps * k_steps, peak, cfg.min_lr)
        norms.append(ctx.stepper.step(lr))
        if micro:
            losses.append(group_loss)
        ctx.counters.optimizer_steps += 1
    if not norms:
        return {}
    out = {
        "grad_norm": sum(norms) / len(norms), "lr": lr, "loss_tokens": int(by_pos_count.sum()),
        "optimizer_steps": len(norms), "_student_tokens": seq_tokens, "_teacher_tokens": teacher_tokens,
    }  # fmt: skip
    if losses:
        out["loss"] = sum(losses) / len(losses)
    for i in range(block_size):
        if by_pos_count[i] > 0:
            out[f"kl_by_block_position/{i}"] = float(by_pos_sum[i] / by_pos_count[i])
    return out


def _num_params(model: torch.nn.Module | None) -> int:
    # ZeRO-3 leaves an empty placeholder in each parameter; ds_numel is its real size
    return 0 if model is None else sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def estimate_flops(ctx: RunContext, episodes: Episodes, block_size: int, stats: dict) -> float:
    """``2 N`` per token forward (rollout, teacher) and ``6 N`` per token trained (student, both copies)."""
    n_student, n_teacher = _num_params(ctx.student.model), _num_params(ctx.teacher)
    rollout_tokens = sum(len(p) + f * block_size for p, f in zip(episodes.prompts, episodes.num_forwards))
    return 2.0 * n_student * rollout_tokens + 2.0 * n_teacher * stats.get("_teacher_tokens", 0) + 6.0 * n_student * stats.get("_student_tokens", 0)


def _write_payload(ctx: RunContext, block_size: int):
    def write(folder: Path) -> None:
        model = ctx.student.model
        state_dict = ctx.stepper.full_state_dict()  # collective under ZeRO-3: every rank calls it
        if ctx.rank == 0:
            model.config.block_size = block_size
            model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
            ctx.student.tokenizer.save_pretrained(folder)
            (folder / SCHEDULER_FILE).write_text(json.dumps(schedule_state(ctx.cfg, ctx.counters.rollout_step), indent=1))
        ctx.stepper.save(folder)
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip
        torch.save(rng, folder / f"rng_rank{ctx.rank}.pt")

    return write


def checkpoint(ctx: RunContext, block_size: int) -> Path:
    """Write a checkpoint of the current state (every rank calls it; rank 0 writes the shared files)."""
    c = ctx.counters
    state = {
        "counters": c.as_dict(), "fingerprint": ctx.fingerprint, "rollout_step": c.rollout_step,
        "data_cursor": c.rollout_step * ctx.cfg.prompts_per_rollout, "world_size": ctx.world_size,
    }  # fmt: skip
    ctx.last_checkpoint = save_checkpoint(ctx.checkpoints, c.rollout_step, _write_payload(ctx, block_size), state, ctx.cfg.keep_checkpoints)
    return ctx.last_checkpoint


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
    (flops,) = distributed.all_reduce_sum([estimate_flops(ctx, episodes, block_size, stats)])
    c.flops += flops
    metrics = {k: v for k, v in stats.items() if not k.startswith("_")}
    metrics.update({
        "stage": pos.index, "stage_name": pos.stage.name, "length_cap": cap, "block_size": block_size,
        "rollout_tokens": rollout_tokens, "rollouts": n_eps,
        "mean_response_tokens": rollout_tokens / max(n_eps, 1), "tokens_per_step": episodes.tokens_per_step,
        "eos_rate": n_finished / max(n_eps, 1), "skipped_rollouts": skipped,
        "cumulative_skipped_rollouts": c.skipped_rollouts, "cumulative_train_tokens": c.train_tokens,
        "flops": flops, "cumulative_flops": c.flops, "optimizer_step": c.optimizer_steps,
    })  # fmt: skip
    metrics.setdefault("loss_tokens", 0)
    return metrics


def default_loggers(ctx: RunContext, console: bool = True) -> MetricLogger:
    resume_after = ctx.counters.rollout_step - 1 if ctx.resumed_from is not None else None
    loggers: list[MetricLogger] = [JsonlLogger(ctx.out / "metrics.jsonl", resume_after=resume_after)]
    if console:
        loggers.append(ConsoleLogger(ctx.cfg.total_rollout_steps))
    return MultiLogger(loggers)


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


def write_summary(ctx: RunContext) -> dict:
    """Write ``OUT/train_summary.json`` (atomically) with the run's counters; returns the summary."""
    c = ctx.counters
    summary = {
        "rollout_step": c.rollout_step, "total_rollout_steps": ctx.cfg.total_rollout_steps,
        "optimizer_steps": c.optimizer_steps, "cumulative_train_tokens": c.train_tokens,
        "rollout_tokens": c.rollout_tokens, "flops": c.flops, "skipped_rollouts": c.skipped_rollouts,
        "skipped_prompts": c.skipped_prompts, "last_stage_completed": last_completed_stage(ctx.cfg.stages, c.rollout_step),
        "finished": c.rollout_step >= ctx.cfg.total_rollout_steps, "objective": ctx.cfg.objective,
        "stages": [s.name for s in ctx.cfg.stages],
    }  # fmt: skip
    write_json(ctx.out / SUMMARY_FILE, summary)
    return summary


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


def _train(recipe, out_dir, teacher, student, data, end, until_stage, loggers, console) -> Path:
    ctx = setup_run(recipe, out_dir, teacher, student, data)
    total = ctx.cfg.total_rollout_steps
    main_rank = ctx.rank == 0
    logger = MultiLogger(([default_loggers(ctx, console)] if main_rank else []) + list(loggers or []))
    logger.log_params({
        "objective": ctx.cfg.objective, "stages": [s.name for s in ctx.cfg.stages], "total_rollout_steps": total,
        "out": str(ctx.out), "resumed_from": str(ctx.resumed_from) if ctx.resumed_from else None,
        "until_stage": until_stage, "train": ctx.cfg.model_dump(mode="json"), "seed": ctx.seed,
    })  # fmt: skip
    try:
        for step in range(ctx.counters.rollout_step, end):
            metrics = train_step(ctx, step)
            logger.log(metrics, step)
            stage_end = step + 1 == total or stage_at(ctx.cfg.stages, step).index != stage_at(ctx.cfg.stages, step + 1).index
            if (step + 1) % ctx.cfg.checkpoint_every == 0 or stage_end:
                checkpoint(ctx, metrics["block_size"])
        last = _final_checkpoint(ctx)
        if main_rank:
            export_model(last, ctx.out)
            write_summary(ctx)
    finally:
        logger.close()
    return ctx.out


def _final_checkpoint(ctx: RunContext) -> Path:
    """The checkpoint of the current step: the one just written or resumed from, else a new one."""
    current = ctx.checkpoints / step_dir_name(ctx.counters.rollout_step)
    if current in (ctx.last_checkpoint, ctx.resumed_from):
        return current
    stage = stage_at(ctx.cfg.stages, max(ctx.counters.rollout_step - 1, 0)).stage
    return checkpoint(ctx, ctx.cfg.stage_block_size(stage))
