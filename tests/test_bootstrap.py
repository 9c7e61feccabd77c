"""The tiny-teacher bootstrap: a short run yields an ordinary HF directory that conversion accepts."""

from __future__ import annotations

import json

import pytest

from opdlm.errors import ConfigError
from opdlm.teacher import BootstrapConfig, bootstrap_teacher
from opdlm.teacher.bootstrap import METRICS_FILE, lr_at, padded_vocab_rows
from opdlm.teacher.sft_data import IGNORE_INDEX, batch_indices, collate, encode_example

TINY = dict(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    steps=12,
    warmup_steps=2,
    batch_size=8,
    n_train=64,
    n_eval=8,
    max_new_tokens=16,
    progress=False,
)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "tiny"
    metrics = bootstrap_teacher(out, BootstrapConfig(**TINY))
    return out, metrics


def test_short_run_saves_an_ordinary_qwen3_directory(short_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, metrics = short_run
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen3" and type(model).__name__ == "Qwen3ForCausalLM"
    assert model.get_input_embeddings().weight.shape[0] == model.config.vocab_size > len(tokenizer)
    assert model.config.vocab_size % 64 == 0
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert any(out.glob("*.safetensors")) and tokenizer.chat_template
    saved = json.loads((out / METRICS_FILE).read_text())
    assert saved["steps_done"] == 12 and saved["n_eval"] == 8 and 0 <= saved["heldout_accuracy"] <= 1
    assert saved == json.loads(json.dumps(metrics))


def test_conversion_reuses_a_padded_row_for_the_mask(short_run, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from opdlm.sources.convert import convert_teacher

    out, _ = short_run
    student = convert_teacher(out, tmp_path / "student", block_size=4)
    config, tokenizer = AutoConfig.from_pretrained(student), AutoTokenizer.from_pretrained(student)
    assert config.vocab_size == AutoConfig.from_pretrained(out).vocab_size  # no resize
    assert config.mask_token_id == tokenizer.mask_token_id < config.vocab_size
    assert config.mask_token_id not in (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_bootstrap_is_deterministic(short_run, tmp_path):
    from safetensors.torch import load_file

    out, _ = short_run
    again = tmp_path / "again"
    bootstrap_teacher(again, BootstrapConfig(**{**TINY, "n_eval": 0}))
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all((first[k] == second[k]).all() for k in first)


def test_existing_output_is_refused(short_run):
    from opdlm.errors import OpdlmError

    out, _ = short_run
    with pytest.raises(OpdlmError, match="already exists"):
        bootstrap_teacher(out, BootstrapConfig(**TINY))


def test_padded_rows_and_schedule():
    assert padded_vocab_rows(224, 64) == 256 and padded_vocab_rows(256, 64) == 320
    config = BootstrapConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(1e-4) and lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(10, config) == pytest.approx(1e-3) and lr_at(100, config) == pytest.approx(1e-4)
    # A slow machine: the time budget is half spent at step 20, so the decay is at its midpoint, and
    # it is fully annealed when the budget runs out, whatever the step.
    assert lr_at(20, config, time_fraction=0.5) == pytest.approx(0.55e-3)
    assert lr_at(20, config, time_fraction=1.0) == pytest.approx(1e-4)
    assert lr_at(90, config, time_fraction=0.1) == lr_at(90, config)  # the further of the two wins


def test_loss_covers_response_and_eos_only():
    from opdlm.data.synthetic import load_split
    from opdlm.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    rows = load_split("train", n=4)
    examples = [encode_example(tokenizer, r) for r in rows]
    input_ids_BT, labels_BT = collate(examples, tokenizer.pad_token_id)
    for i, (ex, row) in enumerate(zip(examples, rows)):
        kept = labels_BT[i][labels_BT[i] != IGNORE_INDEX].tolist()
        assert kept == tokenizer(row.response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        assert input_ids_BT[i, : len(ex.input_ids)].tolist() == ex.input_ids
    batches = batch_indices(20, 3, 7, seed=0)
    assert len(batches) == 7 and batches == batch_indices(20, 3, 7, seed=0)


def test_config_validation_is_one_line():
    from opdlm.config.base import apply_overrides, validate_config

    with pytest.raises(ConfigError, match="divisible by num_heads"):
        validate_config(BootstrapConfig, apply_overrides({}, ["hidden_size=100", "num_heads=3"]))
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        validate_config(BootstrapConfig, apply_overrides({}, ["stepz=3"]))


def test_cli_rejects_a_bad_override_and_writes_nothing(tmp_path, capsys):
    from opdlm.cli.main import main

    out = tmp_path / "teacher"
    assert main(["teacher", "bootstrap", "--out", str(out), "lr=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "lr" in err and len(err.splitlines()) == 1
    assert main(["teacher", "bootstrap", "--out", str(out), "--seconds", "0"]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_short_run(tmp_path, capsys):
    from opdlm.cli.main import main

    out = tmp_path / "teacher"
    overrides = [f"{k}={v}" for k, v in {**TINY, "steps": 3, "n_eval": 0}.items()]
    assert main(["teacher", "bootstrap", "--out", str(out), "--seed", "1", *overrides]) == 0
    assert "teacher ->" in capsys.readouterr().out
    assert json.loads((out / METRICS_FILE).read_text())["config"]["seed"] == 1


def test_a_slow_machine_anneals_by_the_deadline(tmp_path):
    """With far more steps than the time budget allows, the schedule switches to time and stops there."""
    config = BootstrapConfig(**{**TINY, "steps": 100_000, "n_eval": 0, "max_seconds": 5.0, "num_threads": 1})
    metrics = bootstrap_teacher(tmp_path / "slow", config)
    assert metrics["stopped_by_time"] and metrics["schedule_by_time"]
    assert 10 < metrics["steps_done"] < 100_000 and metrics["train_seconds"] < 10
    assert (tmp_path / "slow" / "model.safetensors").is_file()


def test_default_schedule_ignores_the_clock(short_run, tmp_path, monkeypatch):
    """A machine so loaded that every step seems to take 30 s still trains the same teacher (no default budget)."""
    import time

    from safetensors.torch import load_file

    import opdlm.teacher.bootstrap as bootstrap

    assert BootstrapConfig().max_seconds is None
    clock = iter(range(0, 10**9, 30))
    monkeypatch.setattr(bootstrap.time, "perf_counter", lambda: float(next(clock)))
    metrics = bootstrap_teacher(tmp_path / "loaded", BootstrapConfig(**TINY))
    monkeypatch.setattr(bootstrap.time, "perf_counter", time.perf_counter)
    assert metrics["steps_done"] == TINY["steps"] and not metrics["stopped_by_time"] and not metrics["schedule_by_time"]
    ref, loaded = (
        load_file(str(short_run[0] / "model.safetensors")),
        load_file(str(tmp_path / "loaded" / "model.safetensors")),
    )
    assert all(ref[k].equal(loaded[k]) for k in ref)
