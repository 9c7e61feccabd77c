"""What a sampler returns: token ids and step maps, never text round trips."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdlm.numbers import rounded_rate


@dataclass
class SampleBatch:
    """Generated responses of a batch of prompts.

    Attributes:
        response_ids: per sequence, generated token ids (up to and including the first EOS).
        step_map: per sequence, the denoising step (0-based, counted per sequence) that committed
            each token; autoregressive decoding gives ``0, 1, 2, ...``.
        num_forwards: per sequence, the model forward passes it took part in (NFE).
        finished: per sequence, True when it stopped at EOS rather than the length cap.
    """

    response_ids: list[list[int]]
    step_map: list[list[int]]
    num_forwards: list[int]
    finished: list[bool]
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    def num_steps(self, i: int) -> int:
        """Distinct denoising steps that committed the kept tokens of sequence ``i``."""
        return len(set(self.step_map[i]))

    def tokens_per_step(self, i: int) -> float:
        steps = self.num_steps(i)
        return len(self.response_ids[i]) / steps if steps else 0.0

    def mean_tokens_per_step(self) -> float:
        """Total tokens over total steps of the batch (the paper's tokens per step)."""
        steps = sum(self.num_steps(i) for i in range(len(self)))
        return sum(len(r) for r in self.response_ids) / steps if steps else 0.0

    def padded(self, pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(response_BL, step_map_BL, lengths_B)``; padding is ``pad_id`` / step -1."""
        n = len(self)
        length = length if length is not None else max((len(r) for r in self.response_ids), default=0)
        resp = torch.full((n, length), pad_id, dtype=torch.long)
        steps = torch.full((n, length), -1, dtype=torch.long)
        for i, (ids, sm) in enumerate(zip(self.response_ids, self.step_map)):
            k = min(len(ids), length)
            resp[i, :k] = torch.tensor(ids[:k], dtype=torch.long)
            steps[i, :k] = torch.tensor(sm[:k], dtype=torch.long)
        lengths = torch.tensor([min(len(r), length) for r in self.response_ids], dtype=torch.long)
        return resp, steps, lengths

    def records(self) -> list[dict]:
        """One JSON-ready dict per sequence."""
        return [
            {
                "text": self.texts[i] if self.texts else None,
                "token_ids": self.response_ids[i],
                "step_map": self.step_map[i],
                "num_forwards": self.num_forwards[i],
                "tokens_per_step": rounded_rate(self.tokens_per_step(i)),
                "finished": self.finished[i],
            }
            for i in range(len(self))
        ]
