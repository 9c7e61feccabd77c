"""One denoising step of a batch of blocks (METHOD §3) as one pure function: sample, commit, check progress.

The block sampler runs it, compiled by TorchScript where possible (:func:`opdlm.jit.script_or_eager`),
once per forward for every row at once; the rows' Python bookkeeping (moving to the next block,
leaving) stays in :mod:`opdlm.sampling.block_sampler`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opdlm.sampling.logits import sample_with_draws
from opdlm.sampling.remasking import block_progress, select_commits


def denoise_step(
    logits_RKV: Tensor,
    ids_RK: Tensor,
    todo_RK: Tensor,
    block_R: Tensor,
    cap_R: Tensor,
    step_in_block_R: Tensor,
    steps_R: Tensor,
    block_steps_RK: Tensor,
    schedule_K: Tensor,
    mask_id: int,
    eos_ids: Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    uniform_N: Tensor | None,
    remasking: str,
    threshold: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Commit this step's tokens of ``R`` rows' current blocks of ``K`` positions.

    Args:
        logits_RKV: each block position's logits.
        ids_RK, todo_RK: the blocks' ids (mask id where masked) and positions still to decode.
        block_R, cap_R: each row's block index and length cap (positions past the cap are not decoded).
        step_in_block_R, steps_R: denoising steps taken in the current block, and in all.
        block_steps_RK: the step at which each position was committed (-1: not yet).
        schedule_K: the static quota of step ``k`` of a block (the last entry repeats).
        uniform_N: one U[0, 1) draw per position (``R * K``) when ``temperature > 0``.

    Returns:
        ``(ids_RK, block_steps_RK, todo_RK, ended_R)`` after the step; ``ended``: the row's sequence
        ended at an EOS in this block.
    """
    R, K = ids_RK.shape[0], ids_RK.shape[1]
    offsets = torch.arange(K, device=ids_RK.device)
    target = (block_R[:, None] * K + offsets[None, :]) < cap_R[:, None]
    tokens, conf = sample_with_draws(logits_RKV.reshape(R * K, -1), temperature, top_k, top_p, [mask_id], uniform_N)
    tokens, conf = tokens.view(R, K), conf.view(R, K)
    quota = schedule_K[step_in_block_R.clamp(max=schedule_K.shape[0] - 1)]
    commit = select_commits(conf, todo_RK, quota, remasking, threshold)
    ids = torch.where(commit, tokens, ids_RK)
    block_steps = torch.where(commit, steps_R[:, None], block_steps_RK)
    todo, ended = block_progress(ids, mask_id, eos_ids, target)
    return ids, block_steps, todo, ended


def advance_blocks(
    ids_RK: Tensor,
    block_steps_RK: Tensor,
    todo_RK: Tensor,
    ended_R: Tensor,
    block_R: Tensor,
    cap_R: Tensor,
    step_in_block_R: Tensor,
    steps_R: Tensor,
    prev_ids_RK: Tensor,
    carry_R: Tensor,
    mask_id: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """After a step: rows whose block is complete move to their next block or leave.

    A row leaves at an EOS (``ended``) or when its next block would start past its cap; a row that
    moves gets a fully masked block, carries the completed one (``prev_ids``, ``carry``: its keys are
    written by the next forward) and restarts its in-block step count.

    Returns:
        ``(ids, block_steps, todo, block, step_in_block, steps, prev_ids, carry, complete, leave)``:
        the rows' next state, and which rows completed their block and which of those leave.
    """
    K = ids_RK.shape[1]
    complete = ~todo_RK.any(-1)
    leave = complete & (ended_R | ((block_R + 1) * K >= cap_R))
    move = complete & ~leave
    move_RK = move[:, None]
    offsets = torch.arange(K, device=ids_RK.device)
    next_todo = ((block_R[:, None] + 1) * K + offsets[None, :]) < cap_R[:, None]
    return (
        ids_RK.masked_fill(move_RK, mask_id),
        block_steps_RK.masked_fill(move_RK, -1),
        torch.where(move_RK, next_todo, todo_RK),
        block_R + move.long(),
        torch.where(move, torch.zeros_like(step_in_block_R), step_in_block_R + 1),
        steps_R + 1,
        torch.where(move_RK, ids_RK, prev_ids_RK),
        carry_R | move,
        complete,
        leave,
    )
