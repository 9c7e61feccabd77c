"""Forward KL(teacher || student) over the vocabulary, chunked over positions (METHOD §4.5).

The loss only ever needs the vocabulary-sized distributions of the positions that are still
masked. Both models hand over *hidden states* of those positions; each chunk of positions goes
through both output heads, an fp32 log-softmax and the KL, and is then dropped. The student's part
of a chunk runs under activation checkpointing, so backward recomputes the chunk's logits instead of
keeping every chunk's ``(chunk, V)`` fp32 tensors alive: peak memory is a few chunks of logits, not
``batch x length x V`` for two models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def forward_kl_from_logprobs(
    teacher_logprobs_NV: torch.Tensor, student_logprobs_NV: torch.Tensor, top_k: int | None = None
) -> torch.Tensor:
    """Per-position forward KL ``sum_v p_t(v) (log p_t(v) - log p_s(v))``.

    Args:
        teacher_logprobs_NV: teacher log-probabilities (normalised over the full vocabulary).
        student_logprobs_NV: student log-probabilities (normalised over the full vocabulary); columns past
            the teacher's (the mask row conversion adds to a vocabulary with no spare row) get p_t = 0.
        top_k: sum only over the teacher's ``k`` most likely tokens; the distributions are *not*
            renormalised over that slice, so ``k = V`` gives the full KL.

    Returns:
        ``kl_N``, the divergence at each position (fp32).
    """
    t = teacher_logprobs_NV.float()
    s = student_logprobs_NV.float()
    extra = s.shape[-1] - t.shape[-1]
    if extra < 0:
        raise ValueError(f"the student's vocabulary ({s.shape[-1]}) is smaller than the teacher's ({t.shape[-1]})")
    if extra:  # rows conversion added (a full vocabulary gains its mask row): the teacher gives them p = 0
        s = s[..., : t.shape[-1]]
    if top_k is not None and top_k < t.shape[-1]:
        t, idx = torch.topk(t, top_k, dim=-1)
        s = s.gather(-1, idx)
    # exp(-inf) * (-inf - x) would be nan; a zero-probability teacher token contributes nothing.
    p = t.exp()
    return torch.where(p > 0, p * (t - s), torch.zeros_like(p)).sum(-1)


def _chunk_kl(
    teacher_hidden_CH: torch.Tensor,
    student_hidden_CH: torch.Tensor,
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    student_head: Callable[[torch.Tensor], torch.Tensor],
    top_k: int | None,
    teacher_edit: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
    rows: slice | None = None,
) -> torch.Tensor:
    with torch.no_grad():
        teacher_logprobs = torch.log_softmax(teacher_head(teacher_hidden_CH).float(), dim=-1)
        if teacher_edit is not None:
            teacher_logprobs = teacher_edit(teacher_logprobs, rows)
    student_logprobs = torch.log_softmax(student_head(student_hidden_CH).float(), dim=-1)
    return forward_kl_from_logprobs(teacher_logprobs, student_logprobs, top_k)


def forward_kl_chunked(
    teacher_hidden_NH: torch.Tensor,
    student_hidden_NH: torch.Tensor,
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    student_head: Callable[[torch.Tensor], torch.Tensor],
    top_k: int | None = None,
    chunk_size: int = 1024,
    min_chunks: int = 0,
    teacher_edit: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Forward KL at N positions, computing the vocabulary-sized tensors ``chunk_size`` rows at a time.

    Args:
        teacher_hidden_NH: teacher final hidden states predicting each position (no grad needed).
        student_hidden_NH: student final hidden states predicting each position (with grad).
        teacher_head: the teacher's output head (hidden -> logits), e.g. ``teacher.lm_head``.
        student_head: the student's output head.
        top_k: None for the full vocabulary, else the teacher's top-k slice (not renormalised).
        chunk_size: positions per chunk.
        min_chunks: run at least this many chunks, the extra ones empty. Under ZeRO-3 every call of
            a head gathers its weights collectively, so all ranks must make the same number of calls.
        teacher_edit: ``(teacher_logprobs_CV, rows) -> teacher_logprobs_CV``, applied to each chunk's
            teacher log-probabilities (``rows`` of the N positions): the future-aware target
            (:class:`opdlm.train.future_aware.TargetEdit`). None keeps the causal target.

    Returns:
        ``kl_N`` (fp32), differentiable with respect to ``student_hidden_NH`` and the student head.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = student_hidden_NH.shape[0]
    if n == 0 and min_chunks == 0:
        return student_hidden_NH.new_zeros(0, dtype=torch.float32)
    pieces = []
    needs_grad = torch.is_grad_enabled() and student_hidden_NH.requires_grad
    for start in _chunk_starts(n, chunk_size, min_chunks):
        rows = slice(start, start + chunk_size)
        args = (teacher_hidden_NH[rows], student_hidden_NH[rows], teacher_head, student_head, top_k, teacher_edit, rows)
        if needs_grad:
            pieces.append(checkpoint(_chunk_kl, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_kl(*args))
    return torch.cat(pieces)


def _chunk_starts(n: int, chunk_size: int, min_chunks: int) -> list[int]:
    """Start rows of the chunks; past ``n`` they are empty slices (padding up to ``min_chunks``)."""
    starts = list(range(0, n, chunk_size))
    return starts + [n] * max(min_chunks - len(starts), 0)


def num_chunks(n: int, chunk_size: int) -> int:
    """Chunks :func:`forward_kl_chunked` runs for ``n`` positions (without padding)."""
    return -(-n // chunk_size)


def cross_entropy_chunked(
    student_hidden_NH: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    target_ids_N: torch.Tensor,
    chunk_size: int = 1024,
    min_chunks: int = 0,
) -> torch.Tensor:
    """Per-position ``-log p_s(target)``, chunked like :func:`forward_kl_chunked` (the mdm_sft loss).

    Cross-entropy is the forward KL from a one-hot teacher, so the baseline shares the memory profile.

    Returns:
        ``ce_N`` (fp32).
    """

    def chunk_ce(hidden_CH: torch.Tensor, targets_C: torch.Tensor) -> torch.Tensor:
        logits = student_head(hidden_CH).float()
        return torch.nn.functional.cross_entropy(logits, targets_C, reduction="none")

    n = student_hidden_NH.shape[0]
    if n == 0 and min_chunks == 0:
        return student_hidden_NH.new_zeros(0, dtype=torch.float32)
    needs_grad = torch.is_grad_enabled() and student_hidden_NH.requires_grad
    pieces = []
    for start in _chunk_starts(n, chunk_size, min_chunks):
        rows = slice(start, start + chunk_size)
        args = (student_hidden_NH[rows], target_ids_N[rows])
        pieces.append(checkpoint(chunk_ce, *args, use_reentrant=False) if needs_grad else chunk_ce(*args))
    return torch.cat(pieces)
