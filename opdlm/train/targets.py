"""Teacher targets: one causal forward over prompt + finished response, no gradient (METHOD §4.3).

The target for response position ``j`` is the teacher's distribution for token ``j`` given
everything before it, i.e. the teacher's output at sequence index ``P + j - 1`` (the last prompt
token for ``j = 0``). The trainer keeps final *hidden states* and applies the output head chunk by
chunk inside the KL (:mod:`opdlm.train.kl`); :func:`teacher_target_logprobs` is the same thing in
full, for tests and small vocabularies. ``train.target`` picks the target object the loss reads
(:func:`teacher_target`): :class:`CausalTarget` (the paper's) or :class:`FutureAwareTarget`
(:mod:`opdlm.train.future_aware`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from opdlm.config.train import FutureAwareConfig, TrainConfig
from opdlm.models.attention import causal_padding_mask
from opdlm.models.geometry import inference_geometry
from opdlm.train.batch import TrainingRows
from opdlm.train.future_aware import (
    BranchWork,
    TargetEdit,
    candidate_edit,
    scored_future,
    teacher_branch_logprobs,
    top_candidates,
)


@torch.no_grad()
def teacher_hidden_states(
    teacher: torch.nn.Module,
    prompt_ids_BP: torch.Tensor,
    prompt_lens_B: torch.Tensor,
    response_BL: torch.Tensor,
    backend: str,
    return_cache: bool = False,
):
    """Teacher final hidden states that predict each response position.

    Args:
        teacher: a Hugging Face causal LM (``teacher.model`` is its decoder).
        prompt_ids_BP: left-padded prompts.
        prompt_lens_B: true prompt lengths (each >= 1).
        response_BL: responses (right padding is harmless: causal attention never looks ahead).
        backend: the teacher's attention backend (``flash_attention_2`` gets the 2-D padding mask).
        return_cache: also return the forward's KV cache (the future-aware rescoring reads it).

    Returns:
        ``hidden_BLH``: row ``j`` is the state at index ``P + j - 1``; ``(hidden_BLH, cache)`` with
        ``return_cache``.
    """
    P, L = prompt_ids_BP.shape[1], response_BL.shape[1]
    # block size 1 makes the block-causal rule plain causal, with the prompt's left padding masked
    geom = inference_geometry(prompt_lens_B, P, L, block_size=1)
    dtype = next(teacher.parameters()).dtype
    ids_BT = torch.cat([prompt_ids_BP, response_BL], dim=1)
    out = teacher.model(
        input_ids=ids_BT,
        attention_mask=causal_padding_mask(geom, backend, dtype),
        position_ids=geom.position_ids_BT,
        use_cache=return_cache,
    )
    hidden_BLH = out.last_hidden_state[:, P - 1 : P + L - 1]
    return (hidden_BLH, out.past_key_values) if return_cache else hidden_BLH


@torch.no_grad()
def teacher_target_logprobs(
    teacher: torch.nn.Module,
    prompt_ids_BP: torch.Tensor,
    prompt_lens_B: torch.Tensor,
    response_BL: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    """Full-vocabulary target log-probabilities ``(B, L, V)`` (fp32); see :func:`teacher_hidden_states`."""
    hidden_BLH = teacher_hidden_states(teacher, prompt_ids_BP, prompt_lens_B, response_BL, backend)
    return torch.log_softmax(teacher.get_output_embeddings()(hidden_BLH).float(), dim=-1)


@dataclass(frozen=True)
class LossTargets:
    """The teacher's side of the loss at the ``N`` loss positions (what :meth:`CausalTarget.read` returns).

    Attributes:
        hidden_NH: teacher hidden states predicting each position (the causal target, chunked through
            the head inside the KL).
        edit: the future-aware correction the KL applies to each chunk (None: the causal target).
        branch_work: what the future-aware rescoring forwards ran (for the FLOPs count).
        candidate_head_tokens: positions the future-aware candidate pass put through the head.
    """

    hidden_NH: torch.Tensor
    edit: TargetEdit | None = None
    branch_work: BranchWork = field(default_factory=BranchWork)
    candidate_head_tokens: int = 0

    @property
    def corrected(self) -> int:
        """Loss positions whose target the future-aware correction changed (0 for the causal target)."""
        return int(self.edit.edit_N.sum()) if self.edit is not None else 0


@dataclass(frozen=True)
class CausalTarget:
    """The paper's target (METHOD §4.3): the frozen teacher reads prompt + finished response causally.

    The loss sees a target only through :meth:`read` and :attr:`head`, so another kind of target
    (:class:`FutureAwareTarget`) is another object with these two members, chosen once where the run
    is set up (:func:`teacher_target`).

    Attributes:
        model: the teacher (a Hugging Face causal LM, no gradient).
        backend: its attention backend.
    """

    model: torch.nn.Module
    backend: str

    def hidden_states(self, mb: TrainingRows) -> torch.Tensor:
        """``hidden_BLH``: the teacher's final hidden state predicting each response position of ``mb``."""
        return teacher_hidden_states(self.model, mb.prompt_ids_BP, mb.prompt_lens_B, mb.response_BL, self.backend)

    def read(
        self, mb: TrainingRows, row_N: torch.Tensor, col_N: torch.Tensor, block_size: int, chunk_size: int
    ) -> LossTargets:
        """The targets at the loss positions ``(row_N, col_N)`` of ``mb``: the one causal read, nothing else.

        ``block_size`` and ``chunk_size`` (the step's block size, positions per head chunk) are what
        other targets need; the causal one reads the whole row whatever they are.
        """
        return LossTargets(self.hidden_states(mb)[row_N, col_N])

    @property
    def head(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The teacher's output head (hidden -> logits)."""
        return self.model.get_output_embeddings()


@torch.no_grad()
def _top_candidates_chunked(head: Callable, hidden_NH: torch.Tensor, top_k: int, chunk_size: int):
    pieces = [
        top_candidates(torch.log_softmax(head(hidden_NH[s : s + chunk_size]).float(), dim=-1), top_k)
        for s in range(0, hidden_NH.shape[0], chunk_size)
    ]
    return torch.cat([v for v, _ in pieces]), torch.cat([i for _, i in pieces])


@dataclass(frozen=True)
class FutureAwareTarget(CausalTarget):
    """``train.target: future_aware``: the causal read, its top-k candidates rescored on the rest of the block.

    See :mod:`opdlm.train.future_aware` for the definition. The weight is the one of the step being
    trained: the run holds the target at ``settings.weight`` and each step uses
    :func:`step_target` with its planned ``lambda`` (:attr:`opdlm.train.plan.StepPlan.target_weight`).

    Attributes:
        settings: ``train.future_aware`` (candidates, scope, tail, ramp, branch-forward size).
        weight: ``lambda`` of the tempered posterior; 0 is exactly the causal target (nothing extra runs).
    """

    settings: FutureAwareConfig
    weight: float

    def read(
        self, mb: TrainingRows, row_N: torch.Tensor, col_N: torch.Tensor, block_size: int, chunk_size: int
    ) -> LossTargets:
        """The causal read with its KV cache, the candidates' head pass and the rescoring forwards against the cache.

        Args:
            mb: the micro-batch (its ``masked_BL`` decides the ``visible`` scope).
            row_N, col_N: the loss positions.
            block_size: the step's block size (the blocks whose rest is scored).
            chunk_size: positions (and branch tokens) per output-head chunk.
        """
        if self.weight == 0.0 or row_N.numel() == 0:
            return super().read(mb, row_N, col_N, block_size, chunk_size)
        fa = self.settings
        hidden_BLH, cache = teacher_hidden_states(
            self.model, mb.prompt_ids_BP, mb.prompt_lens_B, mb.response_BL, self.backend, return_cache=True
        )
        hidden_NH = hidden_BLH[row_N, col_N]
        cand_NK, idx_NK = _top_candidates_chunked(self.head, hidden_NH, fa.top_k, chunk_size)
        scored_NW = scored_future(mb.masked_BL, mb.lengths_B, block_size, fa.scope)[row_N, col_N]
        works: list[BranchWork] = []

        def scorer(branches):
            target_JW, work = teacher_branch_logprobs(
                self.model,
                cache,
                mb.prompt_lens_B,
                mb.prompt_ids_BP.shape[1],
                branches,
                self.backend,
                fa.max_branch_tokens,
                chunk_size,
            )
            works.append(work)
            return target_JW

        edit, _ = candidate_edit(cand_NK, idx_NK, scored_NW, mb.response_BL, row_N, col_N, self.weight, fa.tail, scorer)
        return LossTargets(hidden_NH, edit, works[0] if works else BranchWork(), int(row_N.numel()))


def teacher_target(teacher: torch.nn.Module, backend: str, cfg: TrainConfig | None = None) -> CausalTarget:
    """The distillation target the loss reads its teacher distributions from: ``cfg.target``'s kind (causal without
    cfg)."""
    if cfg is not None and cfg.target == "future_aware":
        return FutureAwareTarget(teacher, backend, cfg.future_aware, cfg.future_aware.weight)
    return CausalTarget(teacher, backend)


def step_target(target: CausalTarget | None, weight: float | None) -> CausalTarget | None:
    """The target one step distils from: a future-aware target at the step's ``lambda``, any other unchanged.

    Args:
        target: the run's target (``RunContext.target``).
        weight: the step's planned ``lambda`` (:attr:`opdlm.train.plan.StepPlan.target_weight`; None for
            ``target: causal``).
    """
    if isinstance(target, FutureAwareTarget) and weight is not None:
        return replace(target, weight=weight)
    return target
