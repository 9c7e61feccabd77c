"""FlexAttention on CPU gives SDPA's results: the training forward and the sampler (METHOD §2-4).

CUDA runs default to ``flex_attention``; this is the CPU proof that its ``BlockMask`` path is the
same computation as the dense masks. Hugging Face compiles ``flex_attention`` on first use (~37 s
on CPU); the ``eager_flex`` fixture runs it uncompiled (the unfused reference implementation,
seconds on these shapes). What compiles on a GPU is the same function, checked by
``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from opdlm.config.sampler import SamplerConfig
from opdlm.models.student import load_student
from opdlm.sampling.block_sampler import BlockDiffusionSampler
from opdlm.sources.convert import convert_teacher
from opdlm.train.student_forward import student_logits

BLOCK_SIZES = (1, 4, 8)


@pytest.fixture
def eager_flex(monkeypatch):
    """Hugging Face's flex attention without ``torch.compile`` (and without its unfused-path warning)."""
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    def eager(query, key, value, training=False, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", eager)


@pytest.fixture(scope="module")
def students(tiny_teacher_dir, tmp_path_factory):
    """The tiny teacher converted at each block size (block-structured prompts), under both backends."""
    root = tmp_path_factory.mktemp("flex")
    out = {}
    for bs in BLOCK_SIZES:
        path = convert_teacher(tiny_teacher_dir, root / f"b{bs}", block_size=bs, prompt_attention="block")
        out[bs] = {b: load_student(path, device="cpu", dtype="fp32", backend=b) for b in ("sdpa", "flex_attention")}
    return out


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_training_layout_logits_flex_equal_sdpa(students, eager_flex, block_size):
    """``[left-padded block prompt | clean | noisy]`` student logits agree to float rounding."""
    g = torch.Generator().manual_seed(block_size)
    P, L = 6, 16
    prompt_lens = torch.tensor([6, 3, 1])
    prompts = torch.randint(5, 90, (3, P), generator=g)
    prompts[torch.arange(P)[None, :] < (P - prompt_lens)[:, None]] = 0
    clean = torch.randint(5, 90, (3, L), generator=g)
    mask_id = students[block_size]["sdpa"].meta.mask_token_id
    noisy = torch.where(torch.rand(3, L, generator=g) < 0.5, torch.full_like(clean, mask_id), clean)
    with torch.no_grad():
        logits = {
            b: student_logits(
                s.model, prompts, prompt_lens, clean, noisy, block_size, s.meta.logit_shift, b, s.meta.prompt_attention
            )
            for b, s in students[block_size].items()
        }
    torch.testing.assert_close(logits["flex_attention"], logits["sdpa"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_sampler_tokens_and_step_maps_flex_equal_sdpa(students, eager_flex, block_size):
    """Temperature 0, left-padded block prompts of different lengths (partial first blocks): same tokens and step
    maps."""
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    cfg = SamplerConfig(
        block_size=block_size,
        denoise_steps_per_block=block_size,
        remasking="dynamic",
        threshold=0.9,
        temperature=0.0,
        max_new_tokens=8,
    )
    assert students[block_size]["flex_attention"].meta.prompt_attention == "block"
    out = {
        b: BlockDiffusionSampler(s).generate(prompts, cfg, decode_text=False) for b, s in students[block_size].items()
    }
    assert out["flex_attention"].response_ids == out["sdpa"].response_ids
    assert out["flex_attention"].step_map == out["sdpa"].step_map
    assert out["flex_attention"].num_forwards == out["sdpa"].num_forwards
    assert all(len(r) == 8 for r in out["sdpa"].response_ids)  # a random model never stops: all 8 tokens compared
