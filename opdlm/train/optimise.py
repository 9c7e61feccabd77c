"""Step 3 of the loop: turn one batch of training rows into AdamW steps (METHOD §4.3-4.6).

Per optimizer step: micro-batches of rows -> teacher targets (one causal forward, plus the candidate
rescoring of ``train.target: future_aware``) -> student forward on ``[prompt | clean | noisy]`` ->
chunked forward KL (or masked cross-entropy for ``mdm_sft``) -> backward -> clip -> AdamW at the
planned learning rate. In a multi-process run every rank makes the same number of forward/backward
calls and head calls (zero-weighted fillers, padded chunks), which DeepSpeed's collectives require.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from opdlm.config.train import TrainConfig
from opdlm.models.student import Student
from opdlm.train import distributed
from opdlm.train.batch import TrainingRows, make_rows
from opdlm.train.flops import ModelShape, forward_flops, student_train_flops, teacher_read_flops
from opdlm.train.kl import cross_entropy_chunked, forward_kl_chunked, num_chunks
from opdlm.train.plan import StepPlan, seeded_generator
from opdlm.train.setup import RunContext
from opdlm.train.student_forward import noisy_copy, student_hidden_states
from opdlm.train.targets import CausalTarget, LossTargets, step_target


@dataclass(frozen=True)
class MicroBatchStats:
    """What one micro-batch's loss saw, for the step's metrics and FLOP count.

    Attributes:
        loss_sum_K: per-token loss summed by position inside the block (``K = block_size`` entries).
        loss_count_K: loss positions counted by position inside the block.
        tokens: loss positions.
        student_flops: the student's forward + backward (:func:`student_flops`).
        teacher_flops: everything the target ran (:func:`teacher_flops`; 0 without a teacher).
        corrected: loss positions whose target the future-aware correction changed (0 otherwise).
    """

    loss_sum_K: torch.Tensor
    loss_count_K: torch.Tensor
    tokens: int
    student_flops: float
    teacher_flops: float
    corrected: int


def loss_top_k(cfg: TrainConfig) -> int | None:
    """The KL's top-k slice: ``train.kl_top_k`` under ``train.kl: top_k``, None for the full vocabulary."""
    return cfg.kl_top_k if cfg.kl == "top_k" else None


def microbatch_loss(
    student: Student,
    target: CausalTarget | None,
    mb: TrainingRows,
    block_size: int,
    *,
    top_k: int | None = None,
    chunk_size: int = 1024,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, MicroBatchStats]:
    """Sum over the micro-batch's rows of each row's mean loss over its loss positions.

    Args:
        student: the student being trained (model, mask id, logit shift, prompt attention, backend).
        target: where the teacher distributions come from (:func:`opdlm.train.targets.teacher_target`:
            causal, or future-aware at the step's weight); None is the ``mdm_sft`` baseline:
            cross-entropy against the clean tokens.
        mb: the micro-batch, on the student's device.
        block_size: the block size of the step (its stage's).
        top_k: the KL over the teacher's top-k slice (:func:`loss_top_k`); None for the full vocabulary.
        chunk_size: loss positions per chunk of the vocabulary-sized tensors (``train.kl_chunk_size``).
        autocast_dtype: run the forwards and the loss under this autocast dtype (None: no autocast).

    Returns:
        ``(loss_sum, stats)``; the loss carries gradient to the student.
    """
    meta, model = student.meta, student.model
    noisy_BL = noisy_copy(mb.response_BL, mb.masked_BL, mb.lengths_B, meta.mask_token_id)
    row_N, col_N = mb.loss_BL.nonzero(as_tuple=True)
    # ranks must call the (ZeRO-3 sharded) output heads equally often: agree on the chunk count
    min_chunks = distributed.all_reduce_max(num_chunks(int(row_N.numel()), chunk_size))
    autocast = (
        contextlib.nullcontext()
        if autocast_dtype is None
        else torch.autocast(mb.response_BL.device.type, dtype=autocast_dtype)
    )
    with autocast:
        hidden_BLH = student_hidden_states(
            model,
            mb.prompt_ids_BP,
            mb.prompt_lens_B,
            mb.response_BL,
            noisy_BL,
            block_size,
            meta.logit_shift,
            student.backend,
            meta.prompt_attention,
        )
        student_NH = hidden_BLH[row_N, col_N]
        read = None
        if target is not None:
            read = target.read(mb, row_N, col_N, block_size, chunk_size)
            per_token_N = forward_kl_chunked(
                read.hidden_NH,
                student_NH,
                target.head,
                model.get_output_embeddings(),
                top_k,
                chunk_size,
                min_chunks,
                read.edit,
            )
        else:
            targets_N = mb.response_BL[row_N, col_N]
            per_token_N = cross_entropy_chunked(
                student_NH, model.get_output_embeddings(), targets_N, chunk_size, min_chunks
            )
    n_rows = len(mb)
    count_B = torch.zeros(n_rows, device=per_token_N.device).index_add_(0, row_N, torch.ones_like(per_token_N))
    sum_B = torch.zeros(n_rows, device=per_token_N.device).index_add_(0, row_N, per_token_N)
    loss_sum = (sum_B / count_B.clamp(min=1)).sum()
    detached_N = per_token_N.detach()
    pos_N = col_N % block_size
    stats = MicroBatchStats(
        loss_sum_K=torch.zeros(block_size, device=detached_N.device).index_add_(0, pos_N, detached_N).cpu(),
        loss_count_K=torch.zeros(block_size, device=detached_N.device)
        .index_add_(0, pos_N, torch.ones_like(detached_N))
        .cpu(),
        tokens=int(row_N.numel()),
        student_flops=student_flops(student, mb, int(row_N.numel()), block_size),
        teacher_flops=teacher_flops(target, mb, read) if target is not None else 0.0,
        corrected=read.corrected if read is not None else 0,
    )
    return loss_sum, stats


def student_flops(student: Student, mb: TrainingRows, loss_tokens: int, block_size: int) -> float:
    """Forward + backward FLOPs of the student on the micro-batch ``mb`` (:mod:`opdlm.train.flops`)."""
    return student_train_flops(
        ModelShape.from_config(student.model.config),
        mb.prompt_lens_B.tolist(),
        mb.lengths_B.tolist(),
        loss_tokens,
        block_size,
        student.meta.prompt_attention,
    )


def teacher_flops(target: CausalTarget, mb: TrainingRows, read: LossTargets) -> float:
    """The teacher's causal read of ``mb`` (head at the loss positions), plus what a future-aware ``read`` added:
    the candidates' head pass and the rescoring forwards."""
    shape = ModelShape.from_config(target.model.config)
    n = int(read.hidden_NH.shape[0])
    work = read.branch_work
    return teacher_read_flops(shape, mb.prompt_lens_B.tolist(), mb.lengths_B.tolist(), n) + forward_flops(
        shape, work.tokens, work.attended_pairs, work.head_tokens + read.candidate_head_tokens
    )


def filler_rows(eos_id: int, pad_id: int, block_size: int) -> TrainingRows:
    """One row (an EOS prompt, a block of EOS) whose loss is multiplied by zero.

    A rank with fewer micro-batches than another (or none at all: every rollout skipped) runs these
    so that all ranks make the same forward/backward calls, which DeepSpeed's collectives require.
    """
    ones = torch.ones((1, block_size), dtype=torch.bool)
    return make_rows(
        [[eos_id]], [[eos_id] * block_size], torch.zeros(1, dtype=torch.long), ones, ones, pad_id, block_size
    )


@dataclass(frozen=True)
class OptimiseResult:
    """What one rollout step's optimizer steps did (summed over this rank's micro-batches).

    Attributes:
        block_size: the step's block size (the length of the ``_K`` tensors).
        grad_norms: pre-clip gradient norm of each optimizer step taken.
        lr: learning rate of the last optimizer step taken (0.0 when none was).
        losses: loss of each optimizer step that had rows on this rank.
        loss_sum_K: per-token loss summed by position inside the block.
        loss_count_K: loss positions by position inside the block.
        student_flops: FLOPs of the student's forwards and backwards (:func:`student_flops`).
        teacher_flops: FLOPs of everything the target ran (:func:`teacher_flops`).
        corrected: loss positions whose target the future-aware correction changed.
    """

    block_size: int
    grad_norms: tuple[float, ...]
    lr: float
    losses: tuple[float, ...]
    loss_sum_K: torch.Tensor
    loss_count_K: torch.Tensor
    student_flops: float
    teacher_flops: float
    corrected: int

    @property
    def optimizer_steps(self) -> int:
        return len(self.grad_norms)

    def metrics(self) -> dict:
        """The step's optimiser metrics (none when no optimizer step was taken)."""
        if not self.grad_norms:
            return {}
        out = {
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms),
            "lr": self.lr,
            "loss_tokens": int(self.loss_count_K.sum()),
            "optimizer_steps": len(self.grad_norms),
        }
        if self.losses:
            out["loss"] = sum(self.losses) / len(self.losses)
        for i in range(self.block_size):
            if self.loss_count_K[i] > 0:
                out[f"kl_by_block_position/{i}"] = float(self.loss_sum_K[i] / self.loss_count_K[i])
        return out


def optimise(ctx: RunContext, rows: TrainingRows | None, plan: StepPlan) -> OptimiseResult:
    """Consume one batch of rows as ``optimizer_steps_per_rollout`` AdamW steps of gradient-accumulated micro-batches.

    ``rows`` is None when every rollout of this rank was skipped. Optimizer steps whose share of rows
    is empty on every rank are skipped (the learning-rate schedule still advances).
    """
    cfg, block_size, meta = ctx.cfg, plan.block_size, ctx.student.meta
    n_rows = len(rows) if rows is not None else 0
    order = torch.randperm(n_rows, generator=seeded_generator(plan.order_seed))
    target = step_target(ctx.target, plan.target_weight)  # a future-aware target at this step's lambda

    def loss_of(mb: TrainingRows) -> tuple[torch.Tensor, MicroBatchStats]:
        return microbatch_loss(
            ctx.student,
            target,
            mb.to(ctx.device),
            block_size,
            top_k=loss_top_k(cfg),
            chunk_size=cfg.kl_chunk_size,
            autocast_dtype=ctx.autocast_dtype,
        )

    ctx.student.model.train()
    norms, losses, lr = [], [], 0.0
    loss_sum_K, loss_count_K = torch.zeros(block_size), torch.zeros(block_size)
    corrected = 0
    flops_student = flops_teacher = 0.0
    for k, group in enumerate(torch.tensor_split(order, len(plan.lrs))):
        micro = list(group.split(cfg.micro_batch_size)) if len(group) else []
        n_micro = distributed.all_reduce_max(len(micro))
        if n_micro == 0:
            continue
        group_loss = 0.0
        for i in range(n_micro):
            last = i == n_micro - 1
            if i >= len(micro):  # this rank ran out: a zero-weighted filler keeps the collectives in step
                filler = (
                    rows.select(micro[0], block_size)
                    if micro
                    else filler_rows(meta.eos_token_ids[0], meta.pad_token_id, block_size)
                )
                loss_sum, _ = loss_of(filler)
                ctx.stepper.backward(loss_sum * 0.0, last)
                continue
            loss_sum, stats = loss_of(rows.select(micro[i], block_size))
            ctx.stepper.backward(loss_sum / len(group), last)
            group_loss += float(loss_sum.detach()) / len(group)
            loss_sum_K += stats.loss_sum_K
            loss_count_K += stats.loss_count_K
            flops_student += stats.student_flops
            flops_teacher += stats.teacher_flops
            corrected += stats.corrected
        lr = plan.lrs[k]
        norms.append(ctx.stepper.step(lr))
        if micro:
            losses.append(group_loss)
    return OptimiseResult(
        block_size,
        tuple(norms),
        lr,
        tuple(losses),
        loss_sum_K,
        loss_count_K,
        flops_student,
        flops_teacher,
        corrected,
    )
