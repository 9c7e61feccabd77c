"""Continuous batching in the block sampler: every row decodes as if it were alone (METHOD §3).

Greedy: each row's tokens, step map and forward count equal decoding that prompt alone, whatever shares
its forwards (prompts of mixed lengths, EOS and length caps hit at different blocks, a queue longer than
the batch), for both prompt geometries, logit shift on and off, static and dynamic remasking, block
sizes 1, 4 and 8, on sdpa, eager and (uncompiled, tiny shapes) FlexAttention. Sampled: reproducible
per seed and independent of the batch size.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import use_uncompiled_flex_attention

from opdlm.config.sampler import SamplerConfig
from opdlm.models.student import load_student
from opdlm.sampling.block_sampler import BlockDiffusionSampler
from opdlm.sampling.logits import inverse_cdf
from opdlm.sampling.reference import reference_generate
from opdlm.sources.convert import convert_teacher
from opdlm.testing.tiny import make_tiny_causal_lm

TEXTS = ["a", "12+3=", "Hello there", "The quick brown fox", "xy", "0123456789abcdefg"]
CAPS = [20, 7, 13, 20, 3, 17]  # length caps that end rows in different blocks

# (block_size, logit_shift, prompt_attention, remasking)
VARIANTS = [
    (1, True, "block", "static"),
    (4, False, "block", "dynamic"),
    (4, True, "causal", "static"),
    (8, True, "block", "dynamic"),
]


def _name(v) -> str:
    return f"B{v[0]}-{'shift' if v[1] else 'noshift'}-{v[2]}-{v[3]}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A peaky random tiny Qwen3 (confident enough for dynamic remasking) converted once per variant."""
    root = tmp_path_factory.mktemp("cb")
    teacher = make_tiny_causal_lm(root / "teacher", "qwen3", init_std=1.0, seed=3)
    return {
        v: convert_teacher(teacher, root / _name(v), block_size=v[0], logit_shift=v[1], prompt_attention=v[2])
        for v in VARIANTS
    }


def _cfg(variant, **changes) -> SamplerConfig:
    B, _, _, remasking = variant
    base = dict(block_size=B, denoise_steps_per_block=max(1, B // 2), remasking=remasking, threshold=0.6)
    return SamplerConfig(**{**base, "max_new_tokens": 20, **changes})


def _with_eos(student, prompts, cfg):
    """The student with EOS set to the token its free decoding first emits in the most distinct blocks."""
    free = BlockDiffusionSampler(student).generate(prompts, cfg, decode_text=False)
    first = {}
    for r in free.response_ids:
        for t in set(r):
            first.setdefault(t, set()).add(r.index(t) // cfg.block_size)
    eos = max(sorted(first), key=lambda t: len(first[t]))
    return dataclasses.replace(student, meta=dataclasses.replace(student.meta, eos_token_ids=[eos]))


def _alone(student, prompts, cfg, caps):
    sampler = BlockDiffusionSampler(student)
    return [
        sampler.generate([p], cfg.with_overrides(max_new_tokens=c), decode_text=False) for p, c in zip(prompts, caps)
    ]


def _assert_rows_as_alone(batch, alone):
    for i, one in enumerate(alone):
        assert batch.response_ids[i] == one.response_ids[0], i
        assert batch.step_map[i] == one.step_map[0], i
        assert batch.num_forwards[i] == one.num_forwards[0], i
        assert batch.finished[i] == one.finished[0], i


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", VARIANTS, ids=_name)
def test_greedy_rows_decode_as_if_alone(converted, variant, backend):
    student = load_student(converted[variant], device="cpu", dtype="fp32", backend=backend)
    prompts = [student.tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS]
    cfg = _cfg(variant)
    s = _with_eos(student, prompts, cfg)
    alone = _alone(s, prompts, cfg, CAPS)
    # the scenario is exercised: EOS ends some rows, caps end others, in different blocks
    ends = {(len(a.response_ids[0]) - 1) // variant[0] for a in alone}
    assert any(a.finished[0] for a in alone) and not all(a.finished[0] for a in alone) and len(ends) >= 3, ends
    for max_batch in (None, 2):  # everything at once; a queue three times the batch
        sampler = BlockDiffusionSampler(s, max_batch=max_batch)
        batch = sampler.generate_capped(prompts, cfg, CAPS, decode_text=False)
        _assert_rows_as_alone(batch, alone)
        # no forward carries a finished row or an empty slot (rows ending in their very first step aside)
        first_step_ends = sum(1 for a in alone if a.num_forwards[0] == 1)
        assert sampler.stats.row_forwards - sum(batch.num_forwards) <= first_step_ends
    # one cap for all rows: generate() is the same decoding
    shared = BlockDiffusionSampler(s, max_batch=4).generate(prompts, cfg, decode_text=False)
    _assert_rows_as_alone(shared, _alone(s, prompts, cfg, [cfg.max_new_tokens] * len(prompts)))


@pytest.mark.parametrize("variant", VARIANTS[1:3], ids=_name)
def test_capped_batch_equals_no_cache_reference(converted, variant):
    student = load_student(converted[variant], device="cpu", dtype="fp32")
    prompts = [student.tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS]
    cfg = _cfg(variant)
    batch = BlockDiffusionSampler(student, max_batch=3).generate_capped(prompts, cfg, CAPS, decode_text=False)
    for i, (p, cap) in enumerate(zip(prompts, CAPS)):
        ids, steps = reference_generate(student, p, cfg.with_overrides(max_new_tokens=cap))
        assert (batch.response_ids[i], batch.step_map[i]) == (ids, steps), i


def test_flex_attention_rows_decode_as_if_alone(converted, monkeypatch):
    """FlexAttention's BlockMask from the cache's labels: same rows as sdpa, batched or alone (tiny shapes)."""
    use_uncompiled_flex_attention(monkeypatch)
    variant = VARIANTS[3]
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    cfg = _cfg(variant, max_new_tokens=10)
    caps = [10, 4, 9]
    flex = load_student(converted[variant], device="cpu", dtype="fp32", backend="flex_attention")
    sdpa = load_student(converted[variant], device="cpu", dtype="fp32", backend="sdpa")
    batch = BlockDiffusionSampler(flex, max_batch=2).generate_capped(prompts, cfg, caps, decode_text=False)
    _assert_rows_as_alone(batch, _alone(flex, prompts, cfg, caps))
    _assert_rows_as_alone(batch, _alone(sdpa, prompts, cfg, caps))


def test_sampling_reproducible_per_seed_and_independent_of_batch_size(converted):
    variant = VARIANTS[1]
    student = load_student(converted[variant], device="cpu", dtype="fp32")
    prompts = [student.tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS]
    cfg = _cfg(variant, temperature=1.0, top_p=0.9, max_new_tokens=16)

    def run(seed, max_batch):
        out = BlockDiffusionSampler(student, max_batch=max_batch).generate(
            prompts, cfg, torch.Generator().manual_seed(seed), decode_text=False
        )
        return out.response_ids, out.step_map

    first = run(7, None)
    assert run(7, None) == first
    assert run(7, 1) == first and run(7, 4) == first  # each sequence draws from its own generator
    assert run(8, None)[0] != first[0]


def test_inverse_cdf_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(5, 7, generator=g, dtype=torch.float64), -1)
    probs[:, 6] = 0.0  # a forbidden token
    u = torch.tensor([0.0, 0.3, 0.5, 0.9, 0.999999], dtype=torch.float64)
    got = inverse_cdf(probs, u)
    for i in range(5):  # the first token whose cumulative mass exceeds u * total
        cdf, target = 0.0, u[i].item() * probs[i].sum().item()
        for t in range(7):
            cdf += probs[i, t].item()
            if cdf > target:
                break
        assert got[i].item() == t
    # a draw at the very top of the range never lands on the zero-probability tail
    assert inverse_cdf(probs, torch.ones(5, dtype=torch.float64)).tolist() == [5] * 5
