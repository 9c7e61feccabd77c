"""Step 1 of OPD: rollouts with the shared block sampler, kept as token ids and step maps (METHOD §4.1).

Each row is sampled with its own length cap (per-domain caps make caps differ inside a batch), so
responses are already truncated to the cap.
Prompts stay paired with their own rollout by index; a prompt is never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdlm.config.sampler import SamplerConfig
from opdlm.data.prompting import encode_prompts, format_prompt
from opdlm.data.schema import Row
from opdlm.models.student import Student
from opdlm.sampling.block_sampler import BlockDiffusionSampler


@dataclass
class Episodes:
    """Prompts with their responses (rollouts or ground truth), aligned by index.

    Attributes:
        prompts: prompt token ids.
        responses: response token ids (up to and including the first EOS, or cut at the cap).
        step_maps: committing round of each response token (rollouts only; empty lists otherwise).
        finished: True when the response ended with EOS.
        num_forwards: sampler forward passes per rollout (0 for ground truth).
        tokens_per_step: the batch's rollout tokens per denoising step (0 for ground truth).
    """

    prompts: list[list[int]]
    responses: list[list[int]]
    step_maps: list[list[int]]
    finished: list[bool]
    num_forwards: list[int]
    tokens_per_step: float = 0.0


def encode_rows(
    tokenizer, rows: list[Row], math_suffix: bool, max_prompt_tokens: int, enable_thinking: bool = False
) -> tuple[list[list[int]], list[int]]:
    """Prompt ids of the rows that fit ``max_prompt_tokens``; returns ``(prompts, kept_row_positions)``.

    ``enable_thinking`` is the student's (``StudentMeta.enable_thinking``, from the recipe's
    ``convert.enable_thinking``); the teacher's targets read these same prompt ids.
    """
    texts = [format_prompt(tokenizer, r.question, r.domain, math_suffix, enable_thinking) for r in rows]
    ids = encode_prompts(tokenizer, texts)
    kept = [i for i, p in enumerate(ids) if 0 < len(p) <= max_prompt_tokens]
    return [ids[i] for i in kept], kept


def rollout(
    student: Student, prompts: list[list[int]], caps: list[int], cfg: SamplerConfig, generator: torch.Generator
) -> Episodes:
    """Sample one response per prompt; prompt ``i`` gets at most ``caps[i]`` tokens.

    Every prompt is in one continuously batched ``generate`` (rows with different caps side by side):
    a row that hits its cap or EOS leaves the batch at once, so short caps never wait for long ones.
    """
    sampler = BlockDiffusionSampler(student)
    batch = sampler.generate_capped(prompts, cfg, caps, generator, decode_text=False)
    total_tokens = sum(len(r) for r in batch.response_ids)
    total_steps = sum(batch.num_steps(k) for k in range(len(batch)))
    return Episodes(
        prompts,
        batch.response_ids,
        batch.step_map,
        batch.finished,
        batch.num_forwards,
        total_tokens / total_steps if total_steps else 0.0,
    )
