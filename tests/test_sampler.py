"""Block-diffusion sampler: KV cache vs no-cache reference, batching, remasking, EOS, determinism."""

import dataclasses

import pytest
import torch

from opdlm.config.sampler import SamplerConfig
from opdlm.models.student import load_causal_lm, load_student
from opdlm.sampling.autoregressive import generate_autoregressive
from opdlm.sampling.block_sampler import BlockDiffusionSampler
from opdlm.sampling.reference import reference_generate
from opdlm.sources.convert import convert_teacher
from opdlm.testing.tiny import make_tiny_causal_lm

PROMPTS = ["Hello there", "12+3=", "a", "The quick brown fox"]


@pytest.fixture(scope="module")
def peaky_teacher(tmp_path_factory):
    """A random tiny Qwen3 with large init: confident enough to exercise dynamic remasking."""
    return make_tiny_causal_lm(tmp_path_factory.mktemp("peaky") / "t", "qwen3", init_std=1.0, seed=3)


@pytest.fixture(scope="module", params=[False, True], ids=["noshift", "shift"])
def student(request, peaky_teacher, tmp_path_factory):
    out = convert_teacher(peaky_teacher, tmp_path_factory.mktemp("s") / "s", block_size=4, logit_shift=request.param)
    return load_student(out, device="cpu", dtype="fp32")


def _ids(student, texts=PROMPTS):
    return [student.tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def _with_eos(student, token_id):
    """The same student, but treating ``token_id`` as EOS (exercises the stop logic on a random model)."""
    meta = dataclasses.replace(student.meta, eos_token_ids=[token_id])
    return dataclasses.replace(student, meta=meta)


CONFIGS = [
    SamplerConfig(max_new_tokens=14, remasking="static"),
    SamplerConfig(max_new_tokens=16, remasking="dynamic", threshold=0.5),
    SamplerConfig(max_new_tokens=9, block_size=3, denoise_steps_per_block=2, threshold=0.7),
    SamplerConfig(max_new_tokens=7, block_size=1, denoise_steps_per_block=1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"B{c.block_size}-{c.remasking}-{c.max_new_tokens}")
def test_kv_cache_matches_no_cache_reference(student, cfg):
    prompts = _ids(student)
    batch = BlockDiffusionSampler(student).generate(prompts, cfg)
    for i, p in enumerate(prompts):
        ref_ids, ref_steps = reference_generate(student, p, cfg)
        assert batch.response_ids[i] == ref_ids
        assert batch.step_map[i] == ref_steps


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=lambda c: f"B{c.block_size}-{c.remasking}")
def test_eos_stops_like_reference_and_batched_equals_single(student, cfg):
    free = BlockDiffusionSampler(student).generate(_ids(student), cfg)
    # declare a token the model actually produces mid-sequence to be EOS
    eos = free.response_ids[0][5]
    s = _with_eos(student, eos)
    prompts = _ids(s)
    batch = BlockDiffusionSampler(s).generate(prompts, cfg)
    assert batch.finished[0] and batch.response_ids[0][-1] == eos and eos not in batch.response_ids[0][:-1]
    for i, p in enumerate(prompts):
        one = BlockDiffusionSampler(s).generate([p], cfg)
        assert one.response_ids[0] == batch.response_ids[i] == reference_generate(s, p, cfg)[0]
        assert one.step_map[0] == batch.step_map[i]
        assert one.num_forwards[0] == batch.num_forwards[i]


def test_static_block4_steps4_is_one_token_per_step(student):
    cfg = SamplerConfig(block_size=4, denoise_steps_per_block=4, remasking="static", max_new_tokens=24)
    batch = BlockDiffusionSampler(student).generate(_ids(student), cfg)
    for i in range(len(batch)):
        assert len(batch.response_ids[i]) == 24
        assert batch.tokens_per_step(i) == 1.0
        assert sorted(batch.step_map[i]) == list(range(24))
        assert batch.num_forwards[i] == 24  # the prompt's KV rides along with the first step


def test_lower_threshold_never_fewer_tokens_per_step(student):
    prompts = _ids(student)
    tps, first_step = [], []
    for threshold in (1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1):
        cfg = SamplerConfig(max_new_tokens=32, threshold=threshold)
        batch = BlockDiffusionSampler(student).generate(prompts, cfg)
        tps.append(batch.mean_tokens_per_step())
        # the first step of a run sees the same context at every threshold, so its commits can only
        # grow as the threshold falls (later steps follow different trajectories: no such guarantee)
        first_step.append([sum(1 for s in m if s == 0) for m in batch.step_map])
    assert all(all(y >= x for x, y in zip(a, b)) for a, b in zip(first_step, first_step[1:])), first_step
    assert tps[0] == 1.0 and tps[-1] > 2.0 and tps[-1] > tps[2], tps


def test_mask_token_is_never_emitted(student):
    mask_id = student.meta.mask_token_id
    head = student.model.get_output_embeddings()

    def favour_mask(module, args, out):
        out = out.clone()
        out[..., mask_id] += 1e4
        return out

    handle = head.register_forward_hook(favour_mask)
    try:
        for cfg in (SamplerConfig(max_new_tokens=12), SamplerConfig(max_new_tokens=12, temperature=1.0)):
            # (the hook is on the LM head module: the model's own forward calls it, the sampler's own does not)
            batch = BlockDiffusionSampler(student, forward="hf").generate(
                _ids(student), cfg, generator=torch.Generator().manual_seed(0)
            )
            # (at temperature 1 a near-uniform draw may hit EOS early: that is a valid stop)
            eos = set(student.meta.eos_token_ids)
            assert all(mask_id not in r and (len(r) == 12 or r[-1] in eos) for r in batch.response_ids)
    finally:
        handle.remove()


def test_deterministic_for_a_seed(student):
    cfg = SamplerConfig(max_new_tokens=16, temperature=1.0, top_p=0.9)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return BlockDiffusionSampler(student).generate(_ids(student), cfg, generator=generator).response_ids

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_one_equals_greedy(student):
    greedy = BlockDiffusionSampler(student).generate(_ids(student), SamplerConfig(max_new_tokens=12))
    topk1 = BlockDiffusionSampler(student).generate(
        _ids(student),
        SamplerConfig(max_new_tokens=12, temperature=1.5, top_k=1),
        generator=torch.Generator().manual_seed(0),
    )
    assert greedy.response_ids == topk1.response_ids


def test_prompt_attention_is_honoured_by_both_samplers(student, peaky_teacher, tmp_path):
    """The fixture's students use the paper's block prompt; a causal-prompt conversion decodes
    differently, and each mode's KV-cached sampler (block-wise prompt prefill) equals its no-cache
    reference token for token, batched and one by one, on prompts shorter and longer than a block."""
    assert student.meta.prompt_attention == "block"
    causal = load_student(
        convert_teacher(
            peaky_teacher, tmp_path / "c", block_size=4, logit_shift=student.meta.logit_shift, prompt_attention="causal"
        ),
        device="cpu",
        dtype="fp32",
    )
    assert causal.meta.prompt_attention == "causal"
    texts = [*PROMPTS, "0123456789ab", "xy"]
    cfg = SamplerConfig(max_new_tokens=12, remasking="dynamic", threshold=0.5)
    outputs = {}
    for s in (student, causal):
        prompts = _ids(s, texts)
        batch = BlockDiffusionSampler(s).generate(prompts, cfg)
        for i, p in enumerate(prompts):
            assert batch.response_ids[i] == reference_generate(s, p, cfg)[0]
            assert BlockDiffusionSampler(s).generate([p], cfg).response_ids[0] == batch.response_ids[i]
        outputs[s.meta.prompt_attention] = batch.response_ids
    assert outputs["block"] != outputs["causal"]


@pytest.mark.parametrize("prompt_attention", ["block", "causal"])
def test_logit_shift_block1_reproduces_teacher_greedy(peaky_teacher, tmp_path, prompt_attention):
    out = convert_teacher(
        peaky_teacher, tmp_path / "s1", block_size=1, logit_shift=True, prompt_attention=prompt_attention
    )
    student = load_student(out, device="cpu", dtype="fp32")
    teacher, tok = load_causal_lm(peaky_teacher, device="cpu", dtype="fp32")
    prompts = _ids(student)
    cfg = SamplerConfig(block_size=1, denoise_steps_per_block=1, remasking="static", max_new_tokens=20)
    ours = BlockDiffusionSampler(student).generate(prompts, cfg)
    ar = generate_autoregressive(teacher, tok, prompts, max_new_tokens=20)
    assert ours.response_ids == ar.response_ids
    assert all(ours.tokens_per_step(i) == 1.0 for i in range(len(ours)))


def test_autoregressive_stop_at_eos_false_decodes_exactly_max_new_tokens(peaky_teacher):
    teacher, tok = load_causal_lm(peaky_teacher, device="cpu", dtype="fp32")
    prompts = [tok(t, add_special_tokens=False).input_ids for t in PROMPTS]
    stopped = generate_autoregressive(teacher, tok, prompts, max_new_tokens=24)
    # make some row stop early: use the first generated token of row 0 as EOS
    teacher.generation_config.eos_token_id = stopped.response_ids[0][0]
    early = generate_autoregressive(teacher, tok, prompts, max_new_tokens=24)
    full = generate_autoregressive(teacher, tok, prompts, max_new_tokens=24, stop_at_eos=False)
    assert len(early.response_ids[0]) == 1 and early.finished[0]
    assert [len(r) for r in full.response_ids] == [24] * len(prompts) and not any(full.finished)
    assert teacher.generation_config.eos_token_id == stopped.response_ids[0][0]  # the model is left as it was
