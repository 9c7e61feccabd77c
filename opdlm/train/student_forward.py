"""The student's training forward on ``[prompt | clean response | noisy response]`` (METHOD §4.4, BD3LM).

One forward gives, for every block b at once, what a separate forward of ``prompt + clean blocks
< b + noisy block b`` would give: the mask and position ids come from
:func:`~opdlm.models.geometry.training_geometry`, the same geometry the sampler uses at inference.
Only the hidden states that predict response positions are returned (via
:func:`~opdlm.models.geometry.prediction_rows`), so the output head runs on those rows alone.
"""

from __future__ import annotations

import torch

from opdlm.models.attention import attention_mask
from opdlm.models.geometry import prediction_rows, training_geometry


def noisy_copy(
    response_BL: torch.Tensor, masked_BL: torch.Tensor, lengths_B: torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """The state's tokens: mask token at masked positions and past each response's end.

    Positions after the end stay masked because that is what the sampler's last block looks like
    at inference (it never decodes past the first EOS).
    """
    past_end_BL = torch.arange(response_BL.shape[1], device=response_BL.device)[None, :] >= lengths_B[:, None]
    return torch.where(masked_BL | past_end_BL, torch.full_like(response_BL, mask_token_id), response_BL)


def student_hidden_states(
    model: torch.nn.Module,
    prompt_ids_BP: torch.Tensor,
    prompt_lens_B: torch.Tensor,
    clean_BL: torch.Tensor,
    noisy_BL: torch.Tensor,
    block_size: int,
    logit_shift: bool,
    backend: str,
    prompt_attention: str = "causal",
) -> torch.Tensor:
    """Final hidden states predicting each response position of the noisy copy.

    Args:
        model: the student (a Hugging Face causal LM; ``model.model`` is its decoder).
        prompt_ids_BP: left-padded prompts.
        prompt_lens_B: true prompt lengths.
        clean_BL: the finished response (context for later blocks).
        noisy_BL: the selected state (mask token where masked).
        block_size: tokens per block.
        logit_shift: output ``j - 1`` predicts ``j`` instead of ``j`` predicting ``j``.
        backend: attention backend of ``model``.
        prompt_attention: the student's ``block`` or ``causal`` prompt (``StudentMeta.prompt_attention``).

    Returns:
        ``hidden_BLH`` with gradient; apply ``model.get_output_embeddings()`` to get logits.
    """
    P, L = prompt_ids_BP.shape[1], clean_BL.shape[1]
    geom = training_geometry(prompt_lens_B, P, L, block_size, prompt_attention)
    dtype = next(model.parameters()).dtype
    ids_BT = torch.cat([prompt_ids_BP, clean_BL, noisy_BL], dim=1)
    out = model.model(
        input_ids=ids_BT,
        attention_mask=attention_mask(geom, backend, dtype),
        position_ids=geom.position_ids_BT,
        use_cache=False,
    )
    rows_L = prediction_rows(P, L, block_size, logit_shift, noisy=True).to(ids_BT.device)
    return out.last_hidden_state[:, rows_L]


def student_logits(model, *args, **kwargs) -> torch.Tensor:
    """Logits ``(B, L, V)`` of :func:`student_hidden_states` (for tests and small vocabularies)."""
    return model.get_output_embeddings()(student_hidden_states(model, *args, **kwargs))
