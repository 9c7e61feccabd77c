"""The optimiser side of the loop: backward, clip, step, with AdamW in plain PyTorch.

The loop talks to a small interface (``backward``, ``step``, ``save``, ``load``, ``full_state_dict``,
``rollout_context``); DeepSpeed provides the same interface in :mod:`opdlm.train.deepspeed_engine`.
Launched as several processes without DeepSpeed (``torchrun``), gradients are averaged over the
ranks before clipping, so every rank applies the same update (plain data parallelism).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from opdlm.config.train import TrainConfig
from opdlm.train import distributed


class TorchStepper:
    """AdamW with global-norm gradient clipping; the learning rate is set by the caller each step."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay, eps=1e-8
        )
        self.grad_clip = cfg.grad_clip

    def backward(self, loss: torch.Tensor, last_micro_batch: bool = True) -> None:
        """Accumulate the gradients of ``loss`` (``last_micro_batch`` matters to DeepSpeed only)."""
        loss.backward()

    def step(self, lr: float) -> float:
        """Clip, apply one AdamW update at ``lr``, clear gradients; returns the pre-clip grad norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if distributed.is_distributed():
            world = distributed.world_size()
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """None: the model's own ``state_dict`` is complete (only ZeRO-3 has to gather it)."""
        return None

    def rollout_context(self):
        """Nothing to prepare before sampling with plain PyTorch weights."""
        return contextlib.nullcontext()

    def save(self, folder: Path) -> None:
        """Write the optimiser state into a checkpoint folder (rank 0: every rank holds the same state)."""
        if distributed.rank() == 0:
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        """Restore the optimiser state from a (verified) checkpoint folder."""
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
