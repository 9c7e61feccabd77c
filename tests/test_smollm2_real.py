"""The real pretrained SmolLM2-135M-Instruct (pinned GGUF on PyPI) through source, convert, sampler and one OPD step.

The code paths only a real model takes: a Llama whose 49,152-row vocabulary has no spare row (the mask
token needs a new one, and the embeddings stay tied), a ChatML template whose end-of-turn token
``<|im_end|>`` is what decoding must stop on, a tokenizer read out of a GGUF file.

Slow (about 2 minutes on 2 cores the first time on a machine, mostly the download and dequantization
that ``smollm2_teacher_dir`` caches for every later session; under a minute after): each test loads
135M-parameter models in float32.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import TINY, weights

pytestmark = pytest.mark.slow  # reason: 135M-parameter float32 models; the first session also downloads 93 MB

SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_source_is_a_plain_llama_directory_that_records_its_gguf_file(smollm2_teacher_dir):
    from transformers import AutoTokenizer

    config = json.loads((smollm2_teacher_dir / "config.json").read_text())
    assert config["opdlm_gguf"]["sha256"] == SHA256 and config["opdlm_gguf"]["quantization"] == "Q4_1"
    assert config["opdlm_gguf"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "quantization_config" not in config  # an ordinary float32 checkpoint now
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    assert (config["vocab_size"], config["tie_word_embeddings"]) == (49152, True)
    card = (smollm2_teacher_dir / "README.md").read_text()
    assert SHA256 in card and "Q4_1" in card and "Apache-2.0" in card
    assert smollm2_teacher_dir.name == SHA256[:16]  # cached by content
    tok = AutoTokenizer.from_pretrained(smollm2_teacher_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")  # ChatML
    assert tok.eos_token == "<|im_end|>" and config["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.model_max_length == config["max_position_embeddings"] == 8192


def test_teacher_is_trained_not_random(smollm2_teacher_dir):
    """Perplexity on plain English far below on the same words shuffled: the dequantized weights are the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_teacher_dir, dtype=torch.float32).eval()
    words = "The children played in the park while their parents watched from the benches nearby".split()
    shuffled = [words[i] for i in (7, 3, 11, 0, 13, 5, 9, 1, 12, 4, 8, 2, 10, 6)]

    def ppl(text: str) -> float:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            return math.exp(model(ids, labels=ids).loss.item())

    plain, mixed = ppl(" ".join(words)), ppl(" ".join(shuffled))
    assert plain < 100 and mixed > 10 * plain, (plain, mixed)


def test_convert_adds_a_mask_row_keeps_embeddings_tied_and_stops_at_im_end(smollm2_teacher_dir, smollm2_student_dir):
    from opdlm.models.student import load_student

    config = json.loads((smollm2_student_dir / "config.json").read_text())
    assert (config["mask_token_id"], config["vocab_size"]) == (49152, 49153)  # no spare row: one was added
    assert config["opdlm_converted_from"] == "builtin:smollm2-135m-instruct"
    assert config["opdlm_gguf"]["sha256"] == SHA256  # the provenance travels with the student
    teacher_w, student_w = weights(smollm2_teacher_dir), weights(smollm2_student_dir)
    assert "lm_head.weight" not in student_w  # tied: one matrix on disk
    emb_t, emb_s = teacher_w["model.embed_tokens.weight"], student_w["model.embed_tokens.weight"]
    assert torch.equal(emb_s[:49152], emb_t)  # every teacher row unchanged
    new, norms = emb_s[49152], emb_t.norm(dim=-1)
    assert torch.isfinite(new).all() and norms.min() <= new.norm() <= norms.max()  # a row like the others
    for name, w in teacher_w.items():
        if name != "model.embed_tokens.weight":
            assert torch.equal(student_w[name], w), name

    student = load_student(smollm2_student_dir, device="cpu", dtype="fp32")
    model = student.model
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    im_end = student.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert student.meta.eos_token_ids == [im_end] and student.meta.mask_token_id == 49152
    assert student.meta.mask_token_id not in (student.meta.pad_token_id, *student.meta.eos_token_ids)


def test_sampler_runs_a_few_steps_on_the_real_student(smollm2_student_dir):
    from opdlm.data.prompting import encode_prompts, format_prompt
    from opdlm.models.student import load_student
    from opdlm.sampling.block_sampler import BlockDiffusionSampler

    student = load_student(smollm2_student_dir, device="cpu", dtype="fp32")
    texts = [format_prompt(student.tokenizer, q) for q in ("What is 2+3?", "Name a colour.")]
    assert texts[0].startswith("<|im_start|>system\n") and texts[0].endswith("<|im_start|>assistant\n")
    cfg = student.meta.sampler_defaults.with_overrides(max_new_tokens=8, threshold=0.9)
    out = BlockDiffusionSampler(student).generate(encode_prompts(student.tokenizer, texts), cfg)
    for resp, done in zip(out.response_ids, out.finished):
        assert 1 <= len(resp) <= 8 and student.meta.mask_token_id not in resp
        assert all(0 <= t < 49152 for t in resp)  # the mask row is never emitted
        im_end = student.meta.eos_token_ids[0]
        assert done == (im_end in resp)  # decoding stops at <|im_end|>, and only there
        if done:
            assert resp.index(im_end) == len(resp) - 1


def test_one_opd_step_on_real_weights(smollm2_student_dir, tmp_path):
    """The smallest real OPD step: two short prompts, an 8-token rollout, one optimizer step against the teacher."""
    from opdlm.config.recipe import load_recipe
    from opdlm.train.loop import train_step
    from opdlm.train.plan import plan_step
    from opdlm.train.setup import setup_run

    recipe = load_recipe(
        TINY,
        [
            "teacher.source=builtin:smollm2-135m-instruct",
            "convert.logit_shift=false",  # as smollm2_student_dir was converted
            "train.num_prompts=2",
            "train.prompts_per_rollout=2",
            "train.optimizer_steps_per_rollout=1",
            "train.micro_batch_size=2",
            "train.num_threads=2",
            "train.warmup_rollout_steps=0",
            "train.stages=[{name: one, rollout_steps: 1, length: {start: 8, end: 8}}]",
        ],
    )
    ctx, _ = setup_run(recipe, tmp_path / "run", student=str(smollm2_student_dir))
    before = {k: v.detach().clone() for k, v in ctx.student.model.named_parameters()}
    outcome = train_step(ctx, plan_step(ctx.cfg, 0, len(ctx.rows), ctx.seed))
    assert outcome.rollouts == 2 and 0 < outcome.rollout_tokens <= 16
    assert outcome.optimised.optimizer_steps == 1 and outcome.flops_teacher > 0 and outcome.flops_student > 0
    metrics = outcome.optimised.metrics()
    assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0 and metrics["loss_tokens"] > 0
    after = dict(ctx.student.model.named_parameters())
    assert any(not torch.equal(before[k], after[k].detach()) for k in before), "the step changed no weight"
