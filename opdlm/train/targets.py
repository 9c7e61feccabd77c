"""Teacher targets: one causal forward over prompt + finished response, no gradient (METHOD §4.3).

The target for response position ``j`` is the teacher's distribution for token ``j`` given
everything before it, i.e. the teacher's output at sequence index ``P + j - 1`` (the last prompt
token for ``j = 0``). The trainer keeps final *hidden states* and applies the output head chunk by
chunk inside the KL (:mod:`opdlm.train.kl`); :func:`teacher_target_logprobs` is the same thing in
full, for tests and small vocabularies. :func:`loss_targets` is the one dispatch on
``train.target`` (``causal`` or ``future_aware``) the loss calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdlm.config.train import TrainConfig
from opdlm.models.attention import causal_padding_mask
from opdlm.models.geometry import inference_geometry
from opdlm.train.future_aware import (
    BranchWork,
    TargetEdit,
    candidate_edit,
    ramp_weight,
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
) -> torch.Tensor:
    """Teacher final hidden states that predict each response position.

    Args:
        teacher: a Hugging Face causal LM (``teacher.model`` is its decoder).
        prompt_ids_BP: left-padded prompts.
        prompt_lens_B: true prompt lengths (each >= 1).
        response_BL: responses (right padding is harmless: causal attention never looks ahead).
        backend: the teacher's attention backend (``flash_attention_2`` gets the 2-D padding mask).

    Returns:
        ``hidden_BLH``: row ``j`` is the state at index ``P + j - 1``.
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
        use_cache=False,
    )
    return out.last_hidden_state[:, P - 1 : P + L - 1]


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


@dataclass
class LossTargets:
    """The teacher's side of the loss at the ``N`` loss positions.

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


@torch.no_grad()
def _top_candidates_chunked(teacher: torch.nn.Module, hidden_NH: torch.Tensor, top_k: int, chunk_size: int):
    head = teacher.get_output_embeddings()
    pieces = [
        top_candidates(torch.log_softmax(head(hidden_NH[s : s + chunk_size]).float(), dim=-1), top_k)
        for s in range(0, hidden_NH.shape[0], chunk_size)
    ]
    return torch.cat([v for v, _ in pieces]), torch.cat([i for _, i in pieces])


def loss_targets(
    teacher: torch.nn.Module,
    rows,
    row_N: torch.Tensor,
    col_N: torch.Tensor,
    backend: str,
    cfg: TrainConfig,
    step: int,
    block_size: int,
) -> LossTargets:
    """The teacher targets of ``train.target`` at the loss positions ``(row_N, col_N)`` of ``rows``.

    ``causal``: the one causal read (METHOD §4.3), unchanged. ``future_aware``: the same read, plus
    the top-k candidates at each position rescored on the rest of its block
    (:mod:`opdlm.train.future_aware`), with the weight of rollout step ``step``.

    Args:
        rows: a :class:`~opdlm.train.batch.TrainingRows` micro-batch on the teacher's device.
    """
    hidden_NH = teacher_hidden_states(teacher, rows.prompt_ids_BP, rows.prompt_lens_B, rows.response_BL, backend)
    hidden_NH = hidden_NH[row_N, col_N]
    if cfg.target == "causal":
        return LossTargets(hidden_NH)
    fa = cfg.future_aware
    weight = ramp_weight(step, fa.weight, fa.ramp_steps, fa.ramp_shape)
    if weight == 0.0 or hidden_NH.shape[0] == 0:
        return LossTargets(hidden_NH)
    cand_NK, idx_NK = _top_candidates_chunked(teacher, hidden_NH, fa.top_k, cfg.kl_chunk_size)
    scored_NW = scored_future(rows.masked_BL, rows.lengths_B, block_size, fa.scope)[row_N, col_N]
    work = BranchWork()

    def scorer(branches):
        target_JW, done = teacher_branch_logprobs(
            teacher,
            rows.prompt_ids_BP,
            rows.prompt_lens_B,
            rows.response_BL,
            branches,
            backend,
            fa.max_branch_tokens,
            cfg.kl_chunk_size,
        )
        work.__dict__.update(vars(done))
        return target_JW

    edit, _ = candidate_edit(cand_NK, idx_NK, scored_NW, rows.response_BL, row_N, col_N, weight, fa.tail, scorer)
    return LossTargets(hidden_NH, edit, work, int(row_N.numel()))
