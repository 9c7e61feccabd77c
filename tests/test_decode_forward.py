"""The sampler's own forward (opdlm.models.decode_forward) against the model's Hugging Face forward.

Both forwards decode the same prompts through the same sampler (mixed prompt lengths, a queue, rows
ending in different blocks, widened steps with padding): every forward's logits agree to float
rounding, so tokens, step maps and forward counts are equal. Qwen3 (query/key head norms) and Llama
(with projection biases), grouped-query attention, fp32 and bf16; the concatenated weights follow a
parameter that changes between calls (a student under training). The TorchScript builds of the
forward and of the denoising step equal the Python functions they compile.
"""

from __future__ import annotations

import pytest
import torch

from opdlm.config.sampler import SamplerConfig
from opdlm.models.decode_forward import DecodeForward, decode_layers, fused_forward_unsupported
from opdlm.models.student import load_student
from opdlm.sampling import block_sampler
from opdlm.sampling.block_sampler import BlockDiffusionSampler
from opdlm.sources.convert import convert_teacher
from opdlm.testing.tiny import make_tiny_causal_lm

TEXTS = ["a", "12+3=", "Hello there", "The quick brown fox", "xy", "0123456789abcdefg"]
CAPS = [20, 7, 13, 20, 3, 17]


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("fwd")
    out = {}
    for arch in ("qwen3", "llama"):
        teacher = make_tiny_causal_lm(root / f"t-{arch}", arch, init_std=1.0, seed=3)
        if arch == "llama":  # exercise every bias the forward takes
            import json

            cfg_path = teacher / "config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg.update(attention_bias=True, mlp_bias=True)
            cfg_path.write_text(json.dumps(cfg))
            from transformers import AutoModelForCausalLM

            torch.manual_seed(4)
            model = AutoModelForCausalLM.from_pretrained(teacher)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("bias"):
                        p.normal_(0, 0.5)
            model.save_pretrained(teacher)
        out[arch] = convert_teacher(teacher, root / f"s-{arch}", block_size=4, logit_shift=True)
    return out


def _decode_recording_logits(student, forward: str, cfg: SamplerConfig):
    """Greedy decode of TEXTS (3 slots, a queue) with ``forward``; returns the batch and every forward's
    logits at its valid positions."""
    seen: list[torch.Tensor] = []
    original = block_sampler._Decode._forward

    def recording(self, ids, mask, position_ids, keep, rows, valid):
        logits = original(self, ids, mask, position_ids, keep, rows, valid)
        seen.append(logits.float()[valid[:, -keep:]])  # (a padding position's logits are never read)
        return logits

    prompts = [student.tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS]
    block_sampler._Decode._forward = recording
    try:
        sampler = BlockDiffusionSampler(student, max_batch=3, forward=forward)
        batch = sampler.generate_capped(prompts, cfg, CAPS, decode_text=False)
    finally:
        block_sampler._Decode._forward = original
    return sampler, batch, seen


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_same_logits_and_tokens_as_hf_forward(students, arch, dtype):
    student = load_student(students[arch], device="cpu", dtype=dtype)
    cfg = SamplerConfig(block_size=4, denoise_steps_per_block=2, remasking="dynamic", threshold=0.6, max_new_tokens=20)
    fused_sampler, fused, fused_logits = _decode_recording_logits(student, "auto", cfg)
    assert fused_sampler.fused is not None, fused_sampler.fused_unsupported
    hf_sampler, hf, hf_logits = _decode_recording_logits(student, "hf", cfg)
    assert hf_sampler.fused is None
    assert fused_sampler.stats.query_tokens > fused_sampler.stats.row_forwards * 4  # widened steps ran
    tol = 1e-4 if dtype == "fp32" else 0.1
    if dtype == "fp32":  # (bf16 rounding may flip a near-tie, after which the trajectories differ)
        assert fused.response_ids == hf.response_ids and fused.step_map == hf.step_map
        assert fused.num_forwards == hf.num_forwards
        assert len(fused_logits) == len(hf_logits)
    for a, b in zip(fused_logits, hf_logits):
        if a.shape != b.shape:  # bf16 trajectories parted: the rest is not comparable
            break
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_weights_follow_a_changed_parameter(students):
    """A student under training: after an in-place update, the next decode uses the new weights."""
    student = load_student(students["qwen3"], device="cpu", dtype="fp32")
    cfg = SamplerConfig(block_size=4, denoise_steps_per_block=4, max_new_tokens=12)
    fused = BlockDiffusionSampler(student)
    hf = BlockDiffusionSampler(student, forward="hf")
    prompts = [student.tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS[:3]]
    before = fused.generate(prompts, cfg, decode_text=False).response_ids
    with torch.no_grad():  # an optimiser step: in place, as AdamW does it
        for layer in student.model.model.layers:
            layer.self_attn.k_proj.weight.mul_(-1.5)
            layer.mlp.up_proj.weight.add_(0.3)
    after = fused.generate(prompts, cfg, decode_text=False).response_ids
    assert after == hf.generate(prompts, cfg, decode_text=False).response_ids
    assert after != before


def test_autocast_decodes_with_the_models_forward(students):
    """Under bf16 autocast (bf16 rollouts of an fp32 student) the model's forward runs: autocast casts its modules."""
    student = load_student(students["qwen3"], device="cpu", dtype="fp32")
    cfg = SamplerConfig(block_size=4, denoise_steps_per_block=4, max_new_tokens=12)
    prompts = [student.tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS[:3]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = BlockDiffusionSampler(student).generate(prompts, cfg, decode_text=False).response_ids
        hf = BlockDiffusionSampler(student, forward="hf").generate(prompts, cfg, decode_text=False).response_ids
    assert auto == hf


def test_unsupported_cases_name_their_reason(students, tmp_path):
    qwen3 = load_student(students["qwen3"], device="cpu", dtype="fp32", backend="eager")
    assert "eager" in fused_forward_unsupported(qwen3.model, "eager")
    assert BlockDiffusionSampler(qwen3).fused is None  # the model's own forward decodes
    qwen2 = make_tiny_causal_lm(tmp_path / "qwen2", "qwen2")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen2, attn_implementation="sdpa")
    assert "qwen2" in fused_forward_unsupported(model, "sdpa")
    sdpa = load_student(students["qwen3"], device="cpu", dtype="fp32")
    assert fused_forward_unsupported(sdpa.model, "sdpa") is None
    assert isinstance(BlockDiffusionSampler(sdpa).fused, DecodeForward)
    with pytest.raises(ValueError, match="forward"):
        BlockDiffusionSampler(sdpa, forward="fast")


def _unscriptable(x):
    return (lambda y: y + 1)(x)  # TorchScript compiles no lambdas


def test_script_or_eager_compiles_or_falls_back():
    from opdlm.jit import script_or_eager

    assert isinstance(script_or_eager(decode_layers), torch.jit.ScriptFunction)
    assert script_or_eager(_unscriptable) is _unscriptable
    assert torch.equal(script_or_eager(_unscriptable)(torch.ones(2)), torch.full((2,), 2.0))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("remasking", ["static", "dynamic"])
def test_scripted_denoising_step_equals_eager(temperature, remasking):
    """The step's TorchScript build and the Python function give the same commits and the same next state."""
    from opdlm.jit import script_or_eager
    from opdlm.sampling.denoise_step import advance_blocks, denoise_step

    g = torch.Generator().manual_seed(0)
    R, B, V, mask_id = 6, 4, 11, 10
    logits = torch.randn(R, B, V, generator=g) * 3
    ids = torch.where(torch.rand(R, B, generator=g) < 0.5, torch.randint(0, V - 1, (R, B), generator=g), mask_id)
    todo = ids == mask_id
    block, cap = torch.arange(R) % 3, torch.tensor([4, 6, 12, 9, 16, 5])
    step_in_block, steps = torch.randint(0, 4, (R,), generator=g), torch.randint(0, 9, (R,), generator=g)
    block_steps = torch.where(todo, -1, 0)
    draws = torch.rand(R * B, generator=g) if temperature > 0 else None
    args = (logits, ids, todo, block, cap, step_in_block, steps, block_steps, torch.tensor([2, 1, 1]), mask_id,
            torch.tensor([3]), temperature, 0, 0.9, draws, remasking, 0.3)  # fmt: skip
    eager, scripted = denoise_step(*args), script_or_eager(denoise_step)(*args)
    assert isinstance(script_or_eager(denoise_step), torch.jit.ScriptFunction)
    for a, b in zip(eager, scripted):
        assert torch.equal(a, b)
    nxt = (*eager, block, cap, step_in_block, steps, ids.clone(), torch.zeros(R, dtype=torch.bool), mask_id)
    for a, b in zip(advance_blocks(*nxt), script_or_eager(advance_blocks)(*nxt)):
        assert torch.equal(a, b)
    assert bool((eager[0] != ids).any())  # the step committed something
