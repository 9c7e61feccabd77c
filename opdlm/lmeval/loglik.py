"""Exact continuation log-likelihoods of a causal LM (the teacher), for lm-eval's loglikelihood tasks."""

from __future__ import annotations

import torch


@torch.no_grad()
def continuation_logprobs(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int, max_length: int
) -> list[tuple[float, bool]]:
    """``sum_t log p(cont_t | ctx, cont_<t)`` and whether every ``cont_t`` is the argmax, per pair.

    The input is ``(ctx + cont)[:-1]``, cut from the left to ``max_length`` tokens, right-padded to
    the batch's longest; the last ``len(cont)`` logits score the continuation.

    Args:
        model: a Hugging Face causal LM (logits ``(B, T, V)``).
        pairs: ``(context_ids, continuation_ids)``; the context has at least one token.
        batch_size: pairs per forward pass.
        max_length: the model's window.
    """
    device = next(model.parameters()).device
    results: list[tuple[float, bool]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        inputs = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in chunk]
        width = max(len(x) for x in inputs)
        ids_BT = torch.zeros(len(inputs), width, dtype=torch.long)
        attn_BT = torch.zeros(len(inputs), width, dtype=torch.long)
        for b, x in enumerate(inputs):
            ids_BT[b, : len(x)] = torch.tensor(x, dtype=torch.long)
            attn_BT[b, : len(x)] = 1
        logits_BTV = model(input_ids=ids_BT.to(device), attention_mask=attn_BT.to(device)).logits.float()
        logprobs_BTV = torch.log_softmax(logits_BTV, dim=-1)
        for b, ((_, cont), x) in enumerate(zip(chunk, inputs)):
            n = len(cont)
            scored_NV = logprobs_BTV[b, len(x) - n : len(x)]
            target_N = torch.tensor(cont, dtype=torch.long, device=scored_NV.device)
            total = scored_NV.gather(-1, target_N[:, None]).sum().item()
            greedy = bool((scored_NV.argmax(-1) == target_N).all().item())
            results.append((total, greedy))
    return results
