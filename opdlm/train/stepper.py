"""The optimiser side of the loop: backward, clip, step, with AdamW in plain PyTorch.

The loop talks to a small interface (``backward``, ``step``, ``save``, ``load``); DeepSpeed provides
the same interface in :mod:`opdlm.train.deepspeed_engine`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from opdlm.config.train import TrainConfig


class TorchStepper:
    """AdamW with global-norm gradient clipping; the learning rate is set by the caller each step."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay, eps=1e-8
        )
        self.grad_clip = cfg.grad_clip

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, lr: float) -> float:
        """Clip, apply one AdamW update at ``lr``, clear gradients; returns the pre-clip grad norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def save(self, folder: Path) -> None:
        """Write the optimiser state into a checkpoint folder."""
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        """Restore the optimiser state from a (verified) checkpoint folder."""
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
