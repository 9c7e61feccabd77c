"""Training rows as padded tensors, and micro-batches trimmed to their own padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdlm.sampling.block_sampler import left_pad


def right_pad(seqs: list[list[int]], pad: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids_BL, lengths_B)``: sequences left-aligned in a ``(B, L)`` tensor padded with ``pad``."""
    width = width if width is not None else max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s[:width], dtype=torch.long)
    return ids, torch.tensor([min(len(s), width) for s in seqs], dtype=torch.long)


def pad_step_maps(step_maps: list[list[int]], width: int) -> torch.Tensor:
    """``step_map_BL``: each rollout's step map left-aligned, ``-1`` on padding."""
    out = torch.full((len(step_maps), width), -1, dtype=torch.long)
    for i, sm in enumerate(step_maps):
        out[i, : len(sm)] = torch.tensor(sm, dtype=torch.long)
    return out


@dataclass
class TrainingRows:
    """One training row per selected state.

    Attributes:
        prompt_ids_BP: left-padded prompts.
        prompt_lens_B: true prompt lengths.
        response_BL: clean (finished) responses, right-padded.
        lengths_B: response lengths.
        masked_BL: positions masked in the state (the noisy copy's mask tokens).
        loss_BL: positions that carry loss: masked, real, not after the first EOS (nor the EOS, per config).
    """

    prompt_ids_BP: torch.Tensor
    prompt_lens_B: torch.Tensor
    response_BL: torch.Tensor
    lengths_B: torch.Tensor
    masked_BL: torch.Tensor
    loss_BL: torch.Tensor

    def __len__(self) -> int:
        return self.prompt_ids_BP.shape[0]

    def select(self, idx: torch.Tensor, block_size: int) -> TrainingRows:
        """Rows ``idx``, with prompt padding trimmed on the left and responses to whole blocks of the longest."""
        prompt_lens = self.prompt_lens_B[idx]
        P = int(prompt_lens.max())
        lengths = self.lengths_B[idx]
        L = min(-(-int(lengths.max()) // block_size) * block_size, self.response_BL.shape[1])
        return TrainingRows(
            self.prompt_ids_BP[idx, self.prompt_ids_BP.shape[1] - P :],
            prompt_lens,
            self.response_BL[idx, :L],
            lengths,
            self.masked_BL[idx, :L],
            self.loss_BL[idx, :L],
        )

    def to(self, device: torch.device) -> TrainingRows:
        return TrainingRows(*(t.to(device) for t in vars(self).values()))


def make_rows(
    prompts: list[list[int]],
    responses: list[list[int]],
    source_R: torch.Tensor,
    masked_RL: torch.Tensor,
    loss_mask_BL: torch.Tensor,
    pad_id: int,
    block_size: int,
) -> TrainingRows:
    """Build rows: row ``r`` is the state ``masked_RL[r]`` of episode ``source_R[r]``.

    Responses are padded to whole blocks so every row's last block has its full width.
    """
    L = masked_RL.shape[1]
    width = -(-L // block_size) * block_size
    prompt_ids, prompt_lens = left_pad([prompts[i] for i in source_R.tolist()], pad_id)
    response, lengths = right_pad([responses[i] for i in source_R.tolist()], pad_id, width)
    pad_cols = width - L
    masked = torch.nn.functional.pad(masked_RL, (0, pad_cols))
    loss = torch.nn.functional.pad(loss_mask_BL[source_R], (0, pad_cols)) & masked
    return TrainingRows(prompt_ids, prompt_lens, response, lengths, masked, loss)
