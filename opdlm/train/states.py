"""Training states from a rollout's step map (METHOD §4.2).

A rollout's ``step_map`` says which denoising round committed each response token. The state of a
block "just before round r" masks every position that round r or a later round committed. The
state is never terminal: round r itself always committed at least one token of the block.
"""

from __future__ import annotations

import torch

NO_ROUND = torch.iinfo(torch.long).max


def _block_rounds(step_map_BL: torch.Tensor, lengths_B: torch.Tensor, block_size: int):
    """Distinct committing rounds of every block.

    Returns:
        ``(steps_BMK, valid_BMK, rounds_BMK, num_rounds_BM)``: the step map cut into ``M`` blocks of
        ``K = block_size`` (padded), which positions are real tokens, each block's distinct rounds in
        ascending order (``NO_ROUND`` past the last one), and how many distinct rounds each block has.
    """
    n_rows, length = step_map_BL.shape
    n_blocks = -(-length // block_size)
    padded = torch.full((n_rows, n_blocks * block_size), -1, dtype=torch.long)
    padded[:, :length] = step_map_BL
    pos = torch.arange(n_blocks * block_size)[None, :]
    valid = (pos < lengths_B[:, None]) & (padded >= 0)
    steps_BMK = padded.view(n_rows, n_blocks, block_size)
    valid_BMK = valid.view(n_rows, n_blocks, block_size)
    keyed = torch.where(valid_BMK, steps_BMK, NO_ROUND)
    sorted_BMK = keyed.sort(dim=-1).values
    prev = torch.cat([torch.full_like(sorted_BMK[..., :1], -1), sorted_BMK[..., :-1]], dim=-1)
    is_first = (sorted_BMK != prev) & (sorted_BMK != NO_ROUND)
    # compact the distinct rounds to the front: a stable sort puts first occurrences first, in order
    order = torch.sort((~is_first).long(), dim=-1, stable=True).indices
    rounds_BMK = torch.where(is_first, sorted_BMK, NO_ROUND).gather(-1, order)
    return steps_BMK, valid_BMK, rounds_BMK, is_first.sum(-1)


def _mask_from_rounds(steps_BMK, valid_BMK, chosen_BM, length: int) -> torch.Tensor:
    """Mask every real position committed at or after the block's chosen round (``NO_ROUND`` masks none)."""
    masked = valid_BMK & (steps_BMK >= chosen_BM[..., None])
    return masked.reshape(masked.shape[0], -1)[:, :length]


def select_one_per_block(
    step_map_BL: torch.Tensor, lengths_B: torch.Tensor, block_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One state per block: a round drawn uniformly among the rounds that committed tokens of it.

    Args:
        step_map_BL: committing round of each response token; ``-1`` on padding.
        lengths_B: response lengths (tokens past them are padding).
        block_size: tokens per block.
        generator: CPU generator for the draws.

    Returns:
        ``masked_BL``: True where the state has a mask token. Blocks without tokens mask nothing.
    """
    steps_BMK, valid_BMK, rounds_BMK, num_rounds_BM = _block_rounds(step_map_BL.cpu(), lengths_B.cpu(), block_size)
    u = torch.rand(num_rounds_BM.shape, generator=generator)
    pick_BM = (u * num_rounds_BM).long().clamp(max=(num_rounds_BM - 1).clamp(min=0))
    chosen_BM = torch.where(num_rounds_BM > 0, rounds_BMK.gather(-1, pick_BM[..., None]).squeeze(-1), NO_ROUND)
    return _mask_from_rounds(steps_BMK, valid_BMK, chosen_BM, step_map_BL.shape[1])


def select_all_rounds(
    step_map_BL: torch.Tensor, lengths_B: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every round of every block becomes a state: row ``k`` of a rollout puts each block at its ``k``-th round.

    Blocks with fewer than ``k + 1`` rounds mask nothing in row ``k`` (they add no loss there).

    Returns:
        ``(masked_RL, source_R)``: the states, and the rollout index each row comes from.
    """
    steps_BMK, valid_BMK, rounds_BMK, num_rounds_BM = _block_rounds(step_map_BL.cpu(), lengths_B.cpu(), block_size)
    rows, sources = [], []
    for i in range(step_map_BL.shape[0]):
        for k in range(int(num_rounds_BM[i].max()) if num_rounds_BM.shape[1] else 0):
            chosen_M = (
                rounds_BMK[i, :, k] if k < rounds_BMK.shape[-1] else torch.full_like(rounds_BMK[i, :, 0], NO_ROUND)
            )
            rows.append(
                _mask_from_rounds(steps_BMK[i : i + 1], valid_BMK[i : i + 1], chosen_M[None], step_map_BL.shape[1])
            )
            sources.append(i)
    if not rows:
        return torch.zeros((0, step_map_BL.shape[1]), dtype=torch.bool), torch.zeros(0, dtype=torch.long)
    return torch.cat(rows), torch.tensor(sources, dtype=torch.long)


def select_states(
    step_map_BL: torch.Tensor,
    lengths_B: torch.Tensor,
    block_size: int,
    mode: str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch on ``mode`` (``one_per_block`` | ``all_rounds``); returns ``(masked_RL, source_R)``."""
    if mode == "one_per_block":
        masked = select_one_per_block(step_map_BL, lengths_B, block_size, generator)
        return masked, torch.arange(step_map_BL.shape[0])
    if mode == "all_rounds":
        return select_all_rounds(step_map_BL, lengths_B, block_size)
    raise ValueError(f"state selection must be 'one_per_block' or 'all_rounds', got {mode!r}")
