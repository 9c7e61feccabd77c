"""Which masked positions a denoising step commits: static quota and dynamic threshold (METHOD §3)."""

from __future__ import annotations

import torch


def transfer_schedule(block_size: int, denoise_steps_per_block: int) -> list[int]:
    """Tokens committed per step under static remasking; sums to ``block_size``.

    The remainder goes to the earliest steps: B=4, 4 steps -> [1, 1, 1, 1]; B=4, 3 steps -> [2, 1, 1].
    """
    base, extra = divmod(block_size, denoise_steps_per_block)
    return [base + (1 if i < extra else 0) for i in range(denoise_steps_per_block)]


def select_commits(
    confidence_NK: torch.Tensor,
    todo_NK: torch.Tensor,
    quota_N: torch.Tensor,
    remasking: str,
    threshold: float,
) -> torch.Tensor:
    """Positions to commit this step, ``(N, K)`` bool.

    Args:
        confidence_NK: confidence of each position's sampled token.
        todo_NK: positions still masked and to be decoded.
        quota_N: the static quota of each row (clamped to the number of positions left).
        remasking: ``static`` commits the ``quota`` most confident positions; ``dynamic`` also every
            position whose confidence exceeds ``threshold`` (so never fewer than the quota).
        threshold: dynamic confidence threshold.
    """
    conf = confidence_NK.masked_fill(~todo_NK, float("-inf"))
    quota = torch.minimum(quota_N, todo_NK.sum(-1))
    # the quota's most confident positions; ties go to the earlier position (stable sort) for determinism
    order = torch.sort(conf, dim=-1, descending=True, stable=True).indices
    rank_of_slot = torch.arange(conf.shape[-1], device=conf.device)[None, :] < quota[:, None]
    commit = torch.zeros_like(todo_NK).scatter_(-1, order, rank_of_slot) & todo_NK
    if remasking == "dynamic":
        commit |= todo_NK & (confidence_NK > threshold)
    elif remasking != "static":
        raise ValueError("remasking must be 'static' or 'dynamic', got '" + remasking + "'")
    return commit


def block_progress(block_ids_NK: torch.Tensor, mask_id: int, eos_ids: torch.Tensor, target_K: torch.Tensor):
    """Where a block stands: what is left to decode, and whether the sequence ended in it.

    Positions after the first committed EOS are never decoded (they are dropped), so a sequence is
    done as soon as its first EOS and every position before it are committed.

    Args:
        block_ids_NK: the current block's ids (mask id where still masked).
        eos_ids: tensor of EOS ids.
        target_K: positions within the length cap, ``(K,)`` or per row ``(N, K)``.

    Returns:
        ``(todo_NK, ended_N)``: positions still to decode; rows whose sequence ended at an EOS here.
    """
    K = block_ids_NK.shape[-1]
    masked = block_ids_NK == mask_id
    is_eos = torch.isin(block_ids_NK, eos_ids) & ~masked
    pos = torch.arange(K, device=block_ids_NK.device)
    first_eos = torch.where(is_eos, pos, K).min(-1).values
    todo = masked & target_K & (pos[None, :] < first_eos[:, None])
    ended = (first_eos < K) & ~todo.any(-1)
    return todo, ended
