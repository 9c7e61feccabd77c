"""Teacher targets: one causal forward over prompt + finished response, no gradient (METHOD §4.3).

The target for response position ``j`` is the teacher's distribution for token ``j`` given
everything before it, i.e. the teacher's output at sequence index ``P + j - 1`` (the last prompt
token for ``j = 0``). The trainer keeps final *hidden states* and applies the output head chunk by
chunk inside the KL (:mod:`opdlm.train.kl`); :func:`teacher_target_logprobs` is the same thing in
full, for tests and small vocabularies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from opdlm.models.attention import causal_padding_mask
from opdlm.models.geometry import inference_geometry
from opdlm.train.batch import TrainingRows


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


@dataclass(frozen=True)
class CausalTarget:
    """The paper's target (METHOD §4.3): the frozen teacher reads prompt + finished response causally.

    The loss sees a target only through :meth:`hidden_states` and :attr:`head`, so another kind of
    target is another object with these two members, chosen once where the run is set up.

    Attributes:
        model: the teacher (a Hugging Face causal LM, no gradient).
        backend: its attention backend.
    """

    model: torch.nn.Module
    backend: str

    def hidden_states(self, mb: TrainingRows) -> torch.Tensor:
        """``hidden_BLH``: the teacher's final hidden state predicting each response position of ``mb``."""
        return teacher_hidden_states(self.model, mb.prompt_ids_BP, mb.prompt_lens_B, mb.response_BL, self.backend)

    @property
    def head(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The teacher's output head (hidden -> logits)."""
        return self.model.get_output_embeddings()


def teacher_target(teacher: torch.nn.Module, backend: str) -> CausalTarget:
    """The distillation target the loss reads its teacher distributions from."""
    return CausalTarget(teacher, backend)
