"""The masked-diffusion SFT baseline (``objective: mdm_sft``): random per-block masking of ground truth.

It goes through the same loop, student forward and loss reduction as OPD; only the state (random
instead of on-policy) and the target (the ground-truth token instead of the teacher) differ, so the
two can be compared at equal token budgets.
"""

from __future__ import annotations

import torch


def random_block_mask(
    lengths_B: torch.Tensor, length: int, block_size: int, min_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per block, draw ``t ~ U(min_ratio, 1)`` and mask each real position with probability ``t``.

    At least one real position of every non-empty block is masked, so no block is a terminal state.

    Returns:
        ``masked_BL`` (bool).
    """
    n_rows = lengths_B.shape[0]
    n_blocks = -(-length // block_size)
    real_BMK = (torch.arange(n_blocks * block_size)[None, :] < lengths_B[:, None]).view(n_rows, n_blocks, block_size)
    ratio_BM = min_ratio + (1.0 - min_ratio) * torch.rand((n_rows, n_blocks), generator=generator)
    u_BMK = torch.rand((n_rows, n_blocks, block_size), generator=generator)
    masked_BMK = (u_BMK < ratio_BM[..., None]) & real_BMK
    # force the real position with the smallest draw when a block came out fully clean
    forced = u_BMK.masked_fill(~real_BMK, 2.0).argmin(-1, keepdim=True)
    empty_BM = ~masked_BMK.any(-1) & real_BMK.any(-1)
    masked_BMK |= torch.zeros_like(masked_BMK).scatter(-1, forced, empty_BM[..., None])
    return masked_BMK.reshape(n_rows, -1)[:, :length]


def response_tokens(tokenizer, response: str, eos_id: int, cap: int) -> list[int]:
    """Ground-truth response ids followed by EOS, truncated to ``cap`` (a cut response loses its EOS)."""
    ids = tokenizer(response, add_special_tokens=False).input_ids + [eos_id]
    return ids[:cap]
