"""Which response positions may carry loss (METHOD §4.5, §8: padding must never leak into the loss)."""

from __future__ import annotations

import torch


def response_loss_mask(
    response_BL: torch.Tensor, lengths_B: torch.Tensor, eos_ids: list[int], exclude_eos: bool
) -> torch.Tensor:
    """True at real response positions up to the first EOS; the EOS itself only if not excluded.

    Args:
        response_BL: response token ids (anything past ``lengths_B`` is padding).
        lengths_B: true response lengths.
        eos_ids: ids that end a sequence.
        exclude_eos: leave the first EOS position out (paper).

    Returns:
        ``loss_mask_BL`` (bool).
    """
    n_rows, length = response_BL.shape
    pos_L = torch.arange(length, device=response_BL.device)
    real_BL = pos_L[None, :] < lengths_B[:, None].to(response_BL.device)
    is_eos_BL = torch.isin(response_BL, torch.tensor(eos_ids, device=response_BL.device)) & real_BL
    first_eos_B = (
        torch.where(is_eos_BL, pos_L, length).min(-1).values if length else torch.zeros(n_rows, dtype=torch.long)
    )
    last_kept_B = first_eos_B - 1 if exclude_eos else first_eos_B
    return real_BL & (pos_L[None, :] <= last_kept_B[:, None])
