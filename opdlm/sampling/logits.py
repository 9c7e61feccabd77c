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
    uniform_N: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row and report its confidence.

    Args:
        logits_NV: raw logits for N positions.
        temperature: 0 = argmax.
        forbidden_ids: ids that can never be emitted (the mask token).
        generator: draws for ``torch.multinomial`` when ``uniform_N`` is not given.
        uniform_N: one U[0, 1) draw per row, made by the caller (the block sampler draws each
            sequence's own from that sequence's generator, so what a row samples does not depend on
            which rows share its batch); the token is the inverse CDF of the tempered, filtered
            distribution at that draw.

    Returns:
        ``(tokens_N, confidence_N)``: confidence is the untempered, unfiltered probability of the
        sampled token under the model (with forbidden ids removed).
    """
    if temperature == 0.0 or uniform_N is not None:
        return sample_with_draws(logits_NV, temperature, top_k, top_p, list(forbidden_ids), uniform_N)
    logits = _forbid(logits_NV.float(), list(forbidden_ids))
    tempered = torch.softmax(filter_top_k_top_p(logits / temperature, top_k, top_p), dim=-1)
    tokens = torch.multinomial(tempered, 1, generator=generator).squeeze(-1)
    return tokens, torch.softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


def _forbid(logits_NV: torch.Tensor, forbidden_ids: list[int]) -> torch.Tensor:
    if len(forbidden_ids) == 0:
        return logits_NV
    out = logits_NV.clone()
    out[:, forbidden_ids] = float("-inf")
    return out


def sample_with_draws(
    logits_NV: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    forbidden_ids: list[int],
    uniform_N: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_tokens` without a generator: argmax at temperature 0, else the inverse CDF at
    the caller's draws ``uniform_N`` (required then). TorchScript compiles it (the block sampler's
    denoising step runs it that way)."""
    logits = _forbid(logits_NV.float(), forbidden_ids)
    probs = torch.softmax(logits, dim=-1)
    if temperature == 0.0:
        tokens = logits.argmax(dim=-1)
    else:
        assert uniform_N is not None, "temperature > 0 needs one uniform draw per row"
        tempered = torch.softmax(filter_top_k_top_p(logits / temperature, top_k, top_p), dim=-1)
        tokens = inverse_cdf(tempered, uniform_N)
    confidence = probs.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, confidence


def inverse_cdf(probs_NV: torch.Tensor, uniform_N: torch.Tensor) -> torch.Tensor:
    """The token at which each row's cumulative probability first exceeds its draw ``u * total``.

    Never a zero-probability token: the target is kept strictly below the row's total mass, so the
    first cumulative value above it belongs to a token with positive probability.
    """
    cdf = probs_NV.cumsum(-1)
    total = cdf[:, -1:]
    target = torch.minimum(uniform_N.to(cdf.dtype)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)
