"""The block-diffusion sampler's settings: one class shared by rollouts, evaluation and serving."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from opdlm.config.base import StrictModel


class SamplerConfig(StrictModel):
    """How the block-diffusion sampler turns masks into tokens (METHOD §3).

    The converted model stores its defaults in ``config.json`` (``sampler_defaults``); recipes and
    CLI flags override single fields.
    """

    block_size: int = Field(4, ge=1, description="Tokens per block: bidirectional inside, causal across.")
    denoise_steps_per_block: int = Field(
        4, ge=1, description="Denoising steps that commit one block under static remasking (the per-step quota)."
    )
    remasking: Literal["static", "dynamic"] = Field(
        "dynamic",
        description="static: commit the quota of most confident positions per step; "
        "dynamic: also commit every position whose confidence exceeds `threshold`.",
    )
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="Confidence threshold for dynamic remasking.")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature; 0 means argmax (greedy).")
    top_k: int = Field(0, ge=0, description="Keep only the k most likely tokens before sampling; 0 disables.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass; 1.0 disables.")
    max_new_tokens: int = Field(256, ge=1, description="Cap on generated tokens per sequence.")

    @model_validator(mode="after")
    def _steps_fit_block(self) -> SamplerConfig:
        if self.denoise_steps_per_block > self.block_size:
            raise ValueError(
                f"denoise_steps_per_block ({self.denoise_steps_per_block}) must be <= block_size ({self.block_size})"
            )
        return self

    def with_overrides(self, **changes) -> SamplerConfig:
        """A validated copy with the non-None ``changes`` applied (CLI flags left unset are None).

        Changing ``block_size`` alone clamps ``denoise_steps_per_block`` to it, so ``--block-size 2``
        on a model whose default is 4 steps per block stays valid.
        """
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        if changes.get("block_size") is not None and changes.get("denoise_steps_per_block") is None:
            data["denoise_steps_per_block"] = min(data["denoise_steps_per_block"], data["block_size"])
        return type(self).model_validate(data)
