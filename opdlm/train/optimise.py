"""Step 3 of the loop: turn one batch of training rows into AdamW steps (METHOD §4.3-4.6).

Per optimizer step: micro-batches of rows -> teacher targets (one causal forward) -> student forward
on ``[prompt | clean | noisy]`` -> chunked forward KL (or masked cross-entropy for ``mdm_sft``) ->
backward -> clip -> AdamW at the scheduled learning rate. In a multi-process run every rank makes
the same number of forward/backward calls and head calls (zero-weighted fillers, padded chunks),
which DeepSpeed's collectives require.
"""

from __future__ import annotations

import torch

from opdlm.train import distributed
from opdlm.train.batch import TrainingRows, make_rows
from opdlm.train.curriculum import StagePosition
from opdlm.train.flops import ModelShape, forward_flops, student_train_flops, teacher_read_flops
from opdlm.train.kl import cross_entropy_chunked, forward_kl_chunked, num_chunks
from opdlm.train.schedule import learning_rate
from opdlm.train.setup import RunContext
from opdlm.train.student_forward import noisy_copy, student_hidden_states
from opdlm.train.targets import LossTargets, loss_targets


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
    with ctx.autocast():
        hidden_BLH = student_hidden_states(
            model,
            mb.prompt_ids_BP,
            mb.prompt_lens_B,
            mb.response_BL,
            noisy_BL,
            block_size,
            meta.logit_shift,
            ctx.student.backend,
            meta.prompt_attention,
        )
        student_NH = hidden_BLH[row_N, col_N]
        if ctx.cfg.objective == "opd":
            # the current rollout step: counters.rollout_step counts the completed ones
            targets = loss_targets(
                ctx.teacher, mb, row_N, col_N, ctx.teacher_backend, ctx.cfg, ctx.counters.rollout_step, block_size
            )
            top_k = ctx.cfg.kl_top_k if ctx.cfg.kl == "top_k" else None
            per_token_N = forward_kl_chunked(
                targets.hidden_NH,
                student_NH,
                ctx.teacher.get_output_embeddings(),
                model.get_output_embeddings(),
                top_k,
                ctx.cfg.kl_chunk_size,
                min_chunks,
                targets.edit,
            )
        else:
            targets_N = mb.response_BL[row_N, col_N]
            per_token_N = cross_entropy_chunked(
                student_NH, model.get_output_embeddings(), targets_N, ctx.cfg.kl_chunk_size, min_chunks
            )
    n_rows = len(mb)
    count_B = torch.zeros(n_rows, device=per_token_N.device).index_add_(0, row_N, torch.ones_like(per_token_N))
    sum_B = torch.zeros(n_rows, device=per_token_N.device).index_add_(0, row_N, per_token_N)
    loss_sum = (sum_B / count_B.clamp(min=1)).sum()
    detached = per_token_N.detach()
    pos_N = col_N % block_size
    stats = {
        "by_pos_sum": torch.zeros(block_size, device=detached.device).index_add_(0, pos_N, detached).cpu(),
        "by_pos_count": torch.zeros(block_size, device=detached.device)
        .index_add_(0, pos_N, torch.ones_like(detached))
        .cpu(),
        "tokens": int(row_N.numel()),
        "seq_tokens": int((mb.prompt_lens_B.sum() + 2 * mb.lengths_B.sum()).item()),
        "teacher_tokens": int((mb.prompt_lens_B.sum() + mb.lengths_B.sum()).item()),
        "flops_student": microbatch_student_flops(ctx, mb, int(row_N.numel()), block_size),
        "flops_teacher": microbatch_teacher_flops(ctx, mb, targets) if ctx.cfg.objective == "opd" else 0.0,
    }
    return loss_sum, stats


def microbatch_student_flops(ctx: RunContext, mb: TrainingRows, loss_tokens: int, block_size: int) -> float:
    """Forward + backward FLOPs of the student on this micro-batch (:mod:`opdlm.train.flops`)."""
    return student_train_flops(
        ModelShape.from_config(ctx.student.model.config),
        mb.prompt_lens_B.tolist(),
        mb.lengths_B.tolist(),
        loss_tokens,
        block_size,
        ctx.student.meta.prompt_attention,
    )


def microbatch_teacher_flops(ctx: RunContext, mb: TrainingRows, targets: LossTargets) -> float:
    """The teacher's causal read, plus the future-aware candidate pass and rescoring forwards."""
    shape = ModelShape.from_config(ctx.teacher.config)
    n = int(targets.hidden_NH.shape[0])
    work = targets.branch_work
    return teacher_read_flops(shape, mb.prompt_lens_B.tolist(), mb.lengths_B.tolist(), n) + forward_flops(
        shape, work.tokens, work.attended_pairs, work.head_tokens + targets.candidate_head_tokens
    )


def filler_rows(ctx: RunContext, block_size: int) -> TrainingRows:
    """One row (an EOS prompt, a block of EOS) whose loss is multiplied by zero.

    A rank with fewer micro-batches than another (or none at all: every rollout skipped) runs these
    so that all ranks make the same forward/backward calls, which DeepSpeed's collectives require.
    """
    eos = ctx.student.meta.eos_token_ids[0]
    ones = torch.ones((1, block_size), dtype=torch.bool)
    return make_rows(
        [[eos]],
        [[eos] * block_size],
        torch.zeros(1, dtype=torch.long),
        ones,
        ones,
        ctx.student.meta.pad_token_id,
        block_size,
    )


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
    order = torch.randperm(n_rows, generator=ctx.generator(step, 3))
    ctx.student.model.train()
    losses, norms, lr = [], [], 0.0
    by_pos_sum, by_pos_count = torch.zeros(block_size), torch.zeros(block_size)
    seq_tokens = teacher_tokens = 0
    flops_student = flops_teacher = 0.0
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
            flops_student += stats["flops_student"]
            flops_teacher += stats["flops_teacher"]
        lr = learning_rate(step * k_steps + k, total_opt, cfg.warmup_rollout_steps * k_steps, peak, cfg.min_lr)
        norms.append(ctx.stepper.step(lr))
        if micro:
            losses.append(group_loss)
        ctx.counters.optimizer_steps += 1
    if not norms:
        return {}
    out = {
        "grad_norm": sum(norms) / len(norms),
        "lr": lr,
        "loss_tokens": int(by_pos_count.sum()),
        "optimizer_steps": len(norms),
        "_student_tokens": seq_tokens,
        "_teacher_tokens": teacher_tokens,
        "_flops_student": flops_student,
        "_flops_teacher": flops_teacher,
    }
    if losses:
        out["loss"] = sum(losses) / len(losses)
    for i in range(block_size):
        if by_pos_count[i] > 0:
            out[f"kl_by_block_position/{i}"] = float(by_pos_sum[i] / by_pos_count[i])
    return out
