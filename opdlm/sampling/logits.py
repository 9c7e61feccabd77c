"""Pure functions from logits to sampled tokens and their confidence (METHOD §3)."""

from __future__ import annotations

import torch


def filter_top_k_top_p(logits_NV: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus ``top_p`` set to -inf (``top_k=0``, ``top_p=1`` disable)."""
    out = logits_NV
    if top_k and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_tokens(
    logits_NV: torch.Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    forbidden_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row and report its confidence.

    Args:
        logits_NV: raw logits for N positions.
        temperature: 0 = argmax.
        forbidden_ids: ids that can never be emitted (the mask token).

    Returns:
        ``(tokens_N, confidence_N)``: confidence is the untempered, unfiltered probability of the
        sampled token under the model (with forbidden ids removed).
    """
    logits = logits_NV.float()
    if forbidden_ids:
        logits = logits.clone()
        logits[..., list(forbidden_ids)] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if temperature == 0.0:
        tokens = logits.argmax(dim=-1)
    else:
        tempered = filter_top_k_top_p(logits / temperature, top_k, top_p)
        tokens = torch.multinomial(torch.softmax(tempered, dim=-1), 1, generator=generator).squeeze(-1)
    confidence = probs.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, confidence
