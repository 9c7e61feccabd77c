"""FLOPs accounting (opdlm.train.flops) against brute-force counts on real modules, masks and sampler runs."""

from __future__ import annotations

import pytest
import torch

from opdlm.models.geometry import inference_geometry, training_geometry
from opdlm.testing.tiny import tiny_config
from opdlm.train.flops import (
    ModelShape,
    causal_pairs,
    forward_flops,
    forwards_per_block,
    prompt_pairs,
    rollout_flops,
    student_train_flops,
    student_train_pairs,
    summary_total_flops,
    teacher_read_flops,
)


def qwen3(**kw):
    import transformers

    return transformers.Qwen3ForCausalLM(tiny_config("qwen3", **kw))


@pytest.mark.parametrize("kw", [{}, {"tie_word_embeddings": False}, {"attention_bias": True, "vocab_size": 50}])
def test_parameter_count_matches_the_real_module(kw):
    model = qwen3(**kw)
    shape = ModelShape.from_config(model.config)
    assert shape.num_params == sum(p.numel() for p in model.parameters())
    matmul = sum(m.weight.numel() for name, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear))
    assert shape.matmul_params == matmul
    assert shape.param_counts()["head"] == (0 if shape.tied else model.lm_head.weight.numel())


def test_forward_flops_by_hand():
    shape = ModelShape(d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_head=4, d_ff=16, vocab=10)
    # per layer: q 8x8, k 8x4, v 8x4, o 8x8, mlp 3 x 8x16 = 64+32+32+64+384 = 576
    assert shape.matmul_params == 2 * 576
    assert forward_flops(shape, tokens=3, attended_pairs=6, head_tokens=1) == 2 * 1152 * 3 + 4 * 2 * 2 * 4 * 6 + 2 * 80


@pytest.mark.parametrize("prompt_attention", ["block", "causal"])
@pytest.mark.parametrize(("p", "length", "block_size"), [(5, 7, 4), (8, 8, 4), (3, 2, 2), (6, 5, 1)])
def test_attended_pairs_match_the_dense_masks(prompt_attention, p, length, block_size):
    lens = torch.tensor([p])
    train = training_geometry(lens, p, length, block_size, prompt_attention)
    assert student_train_pairs(p, length, block_size, prompt_attention) == int(train.allowed().sum())
    causal = inference_geometry(lens, p, length, 1)
    assert causal_pairs(p + length) == int(causal.allowed().sum())
    prompt = inference_geometry(lens, p, 0, block_size, prompt_attention)
    assert prompt_pairs(p, block_size, prompt_attention) == int(prompt.allowed().sum())


def test_step_parts_sum_over_rows():
    shape = ModelShape.from_config(qwen3().config)
    one = teacher_read_flops(shape, [4], [6], 3) + teacher_read_flops(shape, [2], [5], 2)
    assert teacher_read_flops(shape, [4, 2], [6, 5], 5) == pytest.approx(one)
    s = student_train_flops(shape, [4], [6], 3, 4, "block")
    assert s == pytest.approx(3 * forward_flops(shape, 4 + 12, student_train_pairs(4, 6, 4, "block"), 3))


def test_forwards_per_block():
    # block 0 took rounds 0,1,2; block 1 rounds 3,4 (one more forward's tokens fell after the EOS)
    assert forwards_per_block([0, 1, 1, 2, 3, 4], 6, 6, 4) == [3, 3]
    assert forwards_per_block([], 0, 0, 4) == []


@pytest.mark.parametrize(("logit_shift", "prompt_attention"), [(False, "block"), (True, "block"), (True, "causal")])
def test_rollout_flops_match_the_samplers_forwards(tiny_teacher_dir, tmp_path, logit_shift, prompt_attention):
    """Hook the student's forwards during real sampling: tokens, attended pairs and head rows."""
    from opdlm.models.student import load_student
    from opdlm.sampling.block_sampler import BlockDiffusionSampler
    from opdlm.sources.convert import convert_teacher

    out = convert_teacher(
        tiny_teacher_dir, tmp_path / "s", block_size=4, logit_shift=logit_shift, prompt_attention=prompt_attention
    )
    student = load_student(out, device="cpu", backend="sdpa")
    shape = ModelShape.from_config(student.model.config)
    seen = {"tokens": 0, "pairs": 0, "head": 0}

    def hook(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        seen["tokens"] += ids.shape[1]
        seen["pairs"] += int(mask.sum())
        keep = kwargs.get("logits_to_keep", 0)
        seen["head"] += keep if keep else ids.shape[1]

    handle = student.model.register_forward_pre_hook(hook, with_kwargs=True)
    cfg = student.meta.sampler_defaults.with_overrides(max_new_tokens=16, remasking="dynamic", threshold=0.5)
    expected = 0.0
    try:
        for k, prompt in enumerate([[5, 6, 7], [8, 9, 10, 11, 12, 13]]):  # one prompt per call: no padding
            gen = torch.Generator().manual_seed(k)
            # the model's own forward, which the hook counts (the sampler's own skips padding: fewer FLOPs)
            sampler = BlockDiffusionSampler(student, forward="hf")
            batch = sampler.generate([prompt], cfg.with_overrides(temperature=1.0), gen, False)
            expected += rollout_flops(
                shape,
                [len(prompt)],
                batch.step_map,
                [len(r) for r in batch.response_ids],
                batch.num_forwards,
                4,
                prompt_attention,
                logit_shift,
            )
    finally:
        handle.remove()
    assert expected == pytest.approx(forward_flops(shape, seen["tokens"], seen["pairs"], seen["head"]))


def test_summary_total_flops_reads_both_formats():
    assert summary_total_flops({"rollout": 1.0, "teacher": 2.0, "student": 3.0, "total": 6.0}) == 6.0
    assert summary_total_flops({"rollout": 1.0, "teacher": 2.0, "student": 3.0}) == 6.0
    assert summary_total_flops(4.5e12) == 4.5e12 and summary_total_flops(None) == 0.0


def test_mdm_sft_counts_student_flops_only(tiny_student_dir, tmp_path):
    import json
    from pathlib import Path

    from opdlm.config.recipe import load_recipe
    from opdlm.train.folder import TrainingFolder
    from opdlm.train.loop import train

    over = [
        "train.objective=mdm_sft",
        "train.prompts_per_rollout=4",
        "train.optimizer_steps_per_rollout=2",
        "train.micro_batch_size=2",
        "train.num_prompts=64",
        "train.stages=[{name: short, rollout_steps: 2, length: {start: 8, end: 8}}]",
    ]
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    train(load_recipe(tiny, over), tmp_path / "m", student=str(tiny_student_dir), console=False)
    folder = TrainingFolder(tmp_path / "m")
    flops = json.loads(folder.summary_file.read_text())["flops"]
    assert flops["rollout"] == 0 and flops["teacher"] == 0 and flops["student"] > 0
    assert flops["total"] == flops["student"]
    lines = [json.loads(ln) for ln in folder.metrics_file.read_text().splitlines()]
    assert lines[-1]["flops_total"] == flops["total"] and lines[0]["flops_student"] < lines[1]["flops_student"]
