"""Conversion: unchanged weights, mask token registered, config fields, clear errors, nothing half-written."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from opdlm.errors import OpdlmError
from opdlm.models.convert import MASK_TOKEN
from opdlm.sources.convert import convert_teacher
from opdlm.testing.tiny import make_tiny_causal_lm


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama", "mistral"])
def test_convert_families_reuse_padded_row(tmp_path, arch):
    teacher = make_tiny_causal_lm(tmp_path / "t", arch, padded_rows=8)
    out = convert_teacher(teacher, tmp_path / "s", block_size=4)
    cfg = json.loads((out / "config.json").read_text())
    model, tok = _load(out)  # no trust_remote_code
    assert cfg["block_size"] == 4 and cfg["logit_shift"] is False
    assert cfg["sampler_defaults"]["block_size"] == 4
    mask_id = cfg["mask_token_id"]
    assert tok.convert_tokens_to_ids(MASK_TOKEN) == mask_id == tok.mask_token_id
    assert mask_id not in (tok.pad_token_id, tok.eos_token_id)
    assert mask_id < model.get_input_embeddings().weight.shape[0] == cfg["vocab_size"]
    # weights are byte-identical
    a, b = load_file(teacher / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_resizes_when_no_spare_row(tmp_path):
    teacher = make_tiny_causal_lm(tmp_path / "t", "qwen3", padded_rows=0)
    out = convert_teacher(teacher, tmp_path / "s", block_size=2, logit_shift=True)
    model, tok = _load(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["logit_shift"] is True and cfg["mask_token_id"] == len(tok) - 1
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == cfg["vocab_size"] > cfg["mask_token_id"]
    orig, _ = _load(teacher)
    torch.testing.assert_close(emb[: emb.shape[0] - 1], orig.get_input_embeddings().weight)


def test_bad_inputs_fail_cleanly(tmp_path):
    teacher = make_tiny_causal_lm(tmp_path / "t", "qwen3")
    with pytest.raises(OpdlmError, match="does not exist"):
        convert_teacher(tmp_path / "missing", tmp_path / "o1")
    with pytest.raises(OpdlmError, match="block_size must be an integer >= 1"):
        convert_teacher(teacher, tmp_path / "o2", block_size=0)
    cfg = json.loads((teacher / "config.json").read_text())
    bad = tmp_path / "gpt"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    shutil.copy2(teacher / "model.safetensors", bad / "model.safetensors")  # weights fine, architecture not
    with pytest.raises(OpdlmError, match="unsupported architecture 'gpt2'"):
        convert_teacher(bad, tmp_path / "o3")
    with pytest.raises(OpdlmError, match="unsupported scheme"):
        convert_teacher("s4://bucket/model", tmp_path / "o4")
    for name in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    teacher = make_tiny_causal_lm(tmp_path / "t", "qwen3")
    import opdlm.models.convert as conv

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(conv.shutil, "copy2", boom)
    with pytest.raises(RuntimeError):
        convert_teacher(teacher, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_output_is_not_overwritten(tmp_path):
    teacher = make_tiny_causal_lm(tmp_path / "t", "qwen3")
    out = convert_teacher(teacher, tmp_path / "s")
    with pytest.raises(OpdlmError, match="already exists"):
        convert_teacher(teacher, out)
    convert_teacher(teacher, out, block_size=2, overwrite=True)
    assert json.loads((out / "config.json").read_text())["block_size"] == 2


def test_prompt_format_keys_round_trip_and_legacy_default(tiny_teacher_dir, tmp_path):
    """config.json carries prompt_attention and enable_thinking; a student converted before the keys
    existed loads as causal and non-thinking; a bad value is one clear line."""
    from opdlm.errors import SourceError
    from opdlm.models.student import load_student

    out = convert_teacher(
        tiny_teacher_dir, tmp_path / "s", block_size=4, prompt_attention="causal", enable_thinking=True
    )
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["prompt_attention"], cfg["enable_thinking"]) == ("causal", True)
    meta = load_student(out, device="cpu").meta
    assert (meta.prompt_attention, meta.enable_thinking) == ("causal", True)
    default = json.loads((convert_teacher(tiny_teacher_dir, tmp_path / "d", block_size=4) / "config.json").read_text())
    assert (default["prompt_attention"], default["enable_thinking"]) == ("block", False)  # the paper's
    for key in ("prompt_attention", "enable_thinking"):
        cfg.pop(key)
    (out / "config.json").write_text(json.dumps(cfg))
    meta = load_student(out, device="cpu").meta
    assert (meta.prompt_attention, meta.enable_thinking) == ("causal", False)
    (out / "config.json").write_text(json.dumps({**cfg, "prompt_attention": "full"}))
    with pytest.raises(SourceError, match="prompt_attention must be one of block, causal"):
        load_student(out, device="cpu")
    with pytest.raises(OpdlmError, match="prompt_attention must be one of"):
        convert_teacher(tiny_teacher_dir, tmp_path / "bad", prompt_attention="full")
    assert not (tmp_path / "bad").exists()


def test_eval_refuses_a_recipe_with_the_other_thinking_mode(tiny_student_dir):
    from opdlm.errors import ConfigError
    from opdlm.eval.runners import load_runner

    assert load_runner(tiny_student_dir, device="cpu").enable_thinking is False
    with pytest.raises(ConfigError, match="enable_thinking=false but the recipe's convert.enable_thinking is true"):
        load_runner(tiny_student_dir, device="cpu", enable_thinking=True)
