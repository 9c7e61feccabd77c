"""A no-cache, one-sequence-at-a-time block sampler: the executable specification.

It recomputes the whole sequence at every denoising step, so it shares nothing with the fast
sampler's cache handling, batching or fused block commits; tests check that both give the same
tokens at temperature 0.
"""

from __future__ import annotations

import math

import torch

from opdlm.config.sampler import SamplerConfig
from opdlm.models.geometry import inference_geometry
from opdlm.models.student import Student, block_forward
from opdlm.sampling.logits import sample_tokens
from opdlm.sampling.remasking import block_progress, select_commits, transfer_schedule


@torch.no_grad()
def reference_generate(student: Student, prompt: list[int], cfg: SamplerConfig) -> tuple[list[int], list[int]]:
    """Generate one response without a KV cache. Returns ``(response_ids, step_map)``."""
    meta, device = student.meta, student.device
    block_size = cfg.block_size
    L = math.ceil(cfg.max_new_tokens / block_size) * block_size
    P = len(prompt)
    ids = torch.tensor([prompt + [meta.mask_token_id] * L], device=device)
    geom = inference_geometry(torch.tensor([P], device=device), P, L, block_size, meta.prompt_attention)
    eos_ids = torch.tensor(meta.eos_token_ids, device=device)
    target = torch.arange(L, device=device) < cfg.max_new_tokens
    schedule = transfer_schedule(block_size, cfg.denoise_steps_per_block)
    step_map = [-1] * L
    step = 0
    for b in range(L // block_size):
        s0, e = P + b * block_size, P + (b + 1) * block_size
        k = 0
        while True:
            todo, _ = block_progress(
                ids[:, s0:e], meta.mask_token_id, eos_ids, target[b * block_size : (b + 1) * block_size]
            )
            if not todo.any():
                break
            logits = block_forward(student.model, ids, geom, student.backend, 0, e)[0]
            rows = torch.arange(s0, e, device=device) - (1 if meta.logit_shift else 0)
            tokens, conf = sample_tokens(
                logits[rows],
                0.0 if cfg.temperature == 0 else cfg.temperature,
                cfg.top_k,
                cfg.top_p,
                (meta.mask_token_id,),
            )
            quota = torch.tensor([schedule[min(k, len(schedule) - 1)]], device=device)
            commit = select_commits(conf[None], todo, quota, cfg.remasking, cfg.threshold)[0]
            for j in commit.nonzero().flatten().tolist():
                ids[0, s0 + j] = tokens[j]
                step_map[b * block_size + j] = step
            step += 1
            k += 1
        _, ended = block_progress(
            ids[:, s0:e], meta.mask_token_id, eos_ids, target[b * block_size : (b + 1) * block_size]
        )
        if ended.item():
            break
    response = ids[0, P : P + cfg.max_new_tokens].tolist()
    eos = set(meta.eos_token_ids)
    cut = next((i + 1 for i, t in enumerate(response) if t in eos), None)
    if cut is None:
        cut = next((i for i, t in enumerate(response) if t == meta.mask_token_id), len(response))
    return response[:cut], step_map[:cut]
