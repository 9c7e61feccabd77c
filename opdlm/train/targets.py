"""Teacher targets: one causal forward over prompt + finished response, no gradient (METHOD §4.3).

The target for response position ``j`` is the teacher's distribution for token ``j`` given
everything before it, i.e. the teacher's output at sequence index ``P + j - 1`` (the last prompt
token for ``j = 0``). The trainer keeps final *hidden states* and applies the output head chunk by
chunk inside the KL (:mod:`opdlm.train.kl`); :func:`teacher_target_logprobs` is the same thing in
full, for tests and small vocabularies.
"""

from __future__ import annotations

import torch

from opdlm.models.attention import causal_padding_mask
from opdlm.models.geometry import inference_geometry


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
