"""The training loop end to end on a tiny model: stages, resume, kill, corrupt checkpoints, metrics, baseline.

Every run here is the fast variant of ``configs/tiny.yaml`` (the overrides in :data:`FAST`, also
documented in the recipe's header) on the random tiny Qwen3 of ``tiny_teacher_dir``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import FAST, TINY, assert_same_weights, fast_recipe, train_cmd, weights

from opdlm.errors import ConfigError
from opdlm.train.checkpoint import CheckpointError, list_checkpoints
from opdlm.train.folder import TrainingFolder
from opdlm.train.loop import train

METRIC_KEYS = {
    "loss",
    "kl_by_block_position/0",
    "rollout_tokens",
    "loss_tokens",
    "cumulative_train_tokens",
    "flops",
    "cumulative_flops",
    "tokens_per_step",
    "eos_rate",
    "skipped_rollouts",
    "grad_norm",
    "lr",
    "length_cap",
    "stage",
}


@pytest.fixture(scope="module")
def uninterrupted(tiny_teacher_dir, tmp_path_factory):
    """The reference: the fast recipe run to the end in one call."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(fast_recipe(), out, teacher=str(tiny_teacher_dir), console=False)
    return out


def test_run_exports_a_student_and_logs_every_metric(uninterrupted):
    from opdlm.models.student import load_student
    from opdlm.sampling.block_sampler import BlockDiffusionSampler

    summary = json.loads(TrainingFolder(uninterrupted).summary_file.read_text())
    assert summary["finished"] and summary["last_stage_completed"] == "full"
    assert summary["rollout_step"] == 4 and summary["optimizer_steps"] > 0
    assert summary["cumulative_train_tokens"] > 0 and summary["flops"]["total"] > 0
    lines = [json.loads(ln) for ln in TrainingFolder(uninterrupted).metrics_file.read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2, 3]
    for m in lines:
        assert METRIC_KEYS <= m.keys(), METRIC_KEYS - m.keys()
    assert [m["length_cap"] for m in lines] == [8, 8, 8, 16]
    assert [m["stage_name"] for m in lines] == ["short", "short", "full", "full"]
    assert lines[-1]["cumulative_train_tokens"] == sum(m["rollout_tokens"] for m in lines)
    # OUT is an ordinary converted student: it loads and samples
    student = load_student(uninterrupted, device="cpu")
    out = BlockDiffusionSampler(student).generate(
        [[5, 6, 7]], student.meta.sampler_defaults.with_overrides(max_new_tokens=8)
    )
    assert len(out.response_ids[0]) <= 8
    assert_same_weights(uninterrupted, list_checkpoints(TrainingFolder(uninterrupted).checkpoints)[-1])
    start = weights(TrainingFolder(uninterrupted).converted)
    assert any(not torch.equal(start[k], w) for k, w in weights(uninterrupted).items()), "training changed nothing"


def test_until_stage_stops_after_each_stage_and_continues_the_same_run(uninterrupted, tiny_teacher_dir, tmp_path):
    out = tmp_path / "staged"
    train(fast_recipe(), out, teacher=str(tiny_teacher_dir), until_stage="short", console=False)
    summary = json.loads(TrainingFolder(out).summary_file.read_text())
    assert summary["last_stage_completed"] == "short" and not summary["finished"] and summary["rollout_step"] == 2
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()  # usable after every stage
    train(fast_recipe(), out, teacher=str(tiny_teacher_dir), until_stage="full", console=False)
    summary = json.loads(TrainingFolder(out).summary_file.read_text())
    assert summary["finished"] and summary["rollout_step"] == 4
    assert_same_weights(out, uninterrupted)  # stage by stage == one call
    # a further call has nothing left to do and changes nothing
    train(fast_recipe(), out, teacher=str(tiny_teacher_dir), until_stage=None, console=False)
    assert_same_weights(out, uninterrupted)


def test_unknown_stage_is_a_one_line_config_error(tiny_teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'nope' is not a curriculum stage; valid stages: short, full"):
        train(fast_recipe(), tmp_path / "x", teacher=str(tiny_teacher_dir), until_stage="nope", console=False)
    assert not (tmp_path / "x").exists()


def test_cli_unknown_stage_exits_2_with_one_line(tiny_teacher_dir, tmp_path, capsys):
    from opdlm.cli.main import main

    code = main(
        [
            "train",
            "--config",
            str(TINY),
            "--out",
            str(tmp_path / "o"),
            "--teacher",
            str(tiny_teacher_dir),
            "--until-stage",
            "nope",
            *FAST,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "valid stages: short, full" in err


def _cli(out: Path, teacher: Path, *extra: str) -> list[str]:
    return train_cmd(out, teacher, *FAST, *extra)


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_uninterrupted_weights(uninterrupted, tiny_teacher_dir, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(out, tiny_teacher_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and len(list_checkpoints(TrainingFolder(out).checkpoints)) < 2
    ):
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)  # mid-run: between steps, inside a step or inside a checkpoint write
    proc.wait()
    done = len(list_checkpoints(TrainingFolder(out).checkpoints))
    assert 2 <= done < 4
    resumed = subprocess.run(_cli(out, tiny_teacher_dir), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(out, uninterrupted)
    lines = [json.loads(ln)["step"] for ln in TrainingFolder(out).metrics_file.read_text().splitlines()]
    assert lines == [0, 1, 2, 3]  # steps re-run after the kill are logged once


def test_failure_inside_a_checkpoint_write_leaves_no_partial_checkpoint(
    uninterrupted, tiny_teacher_dir, tmp_path, monkeypatch
):
    import opdlm.train.saving as saving

    out = tmp_path / "crash"
    real = saving._write_payload

    def crashing(ctx, counters, block_size):
        write = real(ctx, counters, block_size)

        def half(folder):
            write(folder)
            if counters.rollout_step == 3:
                raise KeyboardInterrupt  # dies after the weights are written, before the manifest

        return half

    monkeypatch.setattr(saving, "_write_payload", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(fast_recipe(), out, teacher=str(tiny_teacher_dir), console=False)
    assert [p.name for p in list_checkpoints(TrainingFolder(out).checkpoints)] == ["step-000001", "step-000002"]
    monkeypatch.setattr(saving, "_write_payload", real)
    train(fast_recipe(), out, teacher=str(tiny_teacher_dir), console=False)
    assert_same_weights(out, uninterrupted)


def test_corrupt_or_partial_checkpoint_is_reported_not_loaded(uninterrupted, tiny_teacher_dir, tmp_path):
    import shutil

    out = tmp_path / "corrupt"
    shutil.copytree(uninterrupted, out)
    newest = list_checkpoints(TrainingFolder(out).checkpoints)[-1]
    blob = bytearray((newest / "model.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(
        CheckpointError, match="model.safetensors does not match its checksum; delete it to resume from step-000003"
    ):
        train(fast_recipe(), out, teacher=str(tiny_teacher_dir), console=False)
    (newest / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="is partial"):
        train(fast_recipe(), out, teacher=str(tiny_teacher_dir), console=False)


def test_resume_with_a_different_recipe_is_refused(uninterrupted, tiny_teacher_dir):
    from opdlm.errors import OpdlmError

    with pytest.raises(OpdlmError, match="different recipe"):
        train(fast_recipe("train.lr=2e-4"), uninterrupted, teacher=str(tiny_teacher_dir), console=False)


def test_empty_and_eos_only_rollouts_are_counted_and_skipped(tiny_teacher_dir, tmp_path, monkeypatch):
    import opdlm.train.loop as loop
    from opdlm.train.rollout import Episodes

    def garbled(student, prompts, caps, cfg, generator):
        eos = student.meta.eos_token_ids[0]
        responses = [[], [eos], [eos, eos], []][: len(prompts)]
        steps = [[0] * len(r) for r in responses]
        return Episodes(prompts, responses, steps, [bool(r) for r in responses], [1] * len(prompts), 1.0)

    monkeypatch.setattr(loop, "rollout", garbled)
    out = tmp_path / "garbled"
    train(fast_recipe(), out, teacher=str(tiny_teacher_dir), until_stage="short", console=False)
    lines = [json.loads(ln) for ln in TrainingFolder(out).metrics_file.read_text().splitlines()]
    assert [m["skipped_rollouts"] for m in lines] == [4, 4]
    assert all(m["loss_tokens"] == 0 and "loss" not in m for m in lines)
    assert json.loads(TrainingFolder(out).summary_file.read_text())["skipped_rollouts"] == 8


def test_mdm_sft_baseline_runs_through_the_same_loop(tiny_student_dir, tmp_path):
    out = tmp_path / "mdm"
    recipe = fast_recipe("train.objective=mdm_sft")
    train(recipe, out, student=str(tiny_student_dir), until_stage="short", console=False)
    lines = [json.loads(ln) for ln in TrainingFolder(out).metrics_file.read_text().splitlines()]
    assert len(lines) == 2 and all(m["loss"] > 0 and m["loss_tokens"] > 0 for m in lines)
    # responses are ground truth truncated to the cap (8 tokens, so no EOS survives)
    assert all(m["rollout_tokens"] == 4 * 8 for m in lines)
    assert not TrainingFolder(out).converted.exists()  # the given student is used, no teacher needed


def test_gradient_checkpointing_top_k_kl_and_all_rounds_run(tiny_teacher_dir, tmp_path):
    out = tmp_path / "options"
    recipe = fast_recipe(
        "train.gradient_checkpointing=true",
        "train.kl=top_k",
        "train.kl_top_k=4",
        "train.state_selection=all_rounds",
        "train.exclude_eos_from_loss=false",
    )
    train(recipe, out, teacher=str(tiny_teacher_dir), until_stage="short", console=False)
    lines = [json.loads(ln) for ln in TrainingFolder(out).metrics_file.read_text().splitlines()]
    assert len(lines) == 2 and all(m["loss"] >= 0 and m["loss_tokens"] > 0 for m in lines)


def test_filler_micro_batches_and_empty_chunks_change_nothing(tiny_teacher_dir, tmp_path, monkeypatch):
    """Ranks that run out of rows pad with zero-weighted fillers (and empty KL chunks) so collectives
    stay in step; simulated here by a world where another rank always has one more of each."""
    from opdlm.train import distributed

    ref = tmp_path / "ref"
    train(fast_recipe(), ref, teacher=str(tiny_teacher_dir), until_stage="short", console=False)
    monkeypatch.setattr(distributed, "all_reduce_max", lambda value: value + 1)
    padded = tmp_path / "padded"
    train(fast_recipe(), padded, teacher=str(tiny_teacher_dir), until_stage="short", console=False)
    assert_same_weights(ref, padded)
    lines = [json.loads(ln) for ln in TrainingFolder(padded).metrics_file.read_text().splitlines()]
    ref_lines = [json.loads(ln) for ln in TrainingFolder(ref).metrics_file.read_text().splitlines()]
    assert [m["loss_tokens"] for m in lines] == [m["loss_tokens"] for m in ref_lines]


def test_mdm_sft_on_the_teachers_own_greedy_completions(tiny_teacher_dir, tiny_student_dir, tmp_path, monkeypatch):
    """data.responses: teacher_greedy trains on exactly the teacher's greedy completions, generated once."""
    from opdlm.data.prompting import format_prompt
    from opdlm.data.schema import read_rows
    from opdlm.eval import runners
    from opdlm.models.student import load_causal_lm
    from opdlm.sampling.autoregressive import generate_autoregressive
    from opdlm.study.budget import mdm_step_tokens
    from opdlm.train.data import load_training_rows

    monkeypatch.setenv("OPDLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "mdm-teacher"
    recipe = fast_recipe("train.objective=mdm_sft", "data.responses=teacher_greedy")
    cfg = recipe.train
    train(recipe, out, teacher=str(tiny_teacher_dir), student=str(tiny_student_dir), until_stage="short", console=False)
    (cached,) = (tmp_path / "cache" / "teacher_completions").glob("*.jsonl")
    saved = read_rows(cached)
    rows = load_training_rows(recipe.data.source, None, cfg.num_prompts, recipe.seed)
    assert [r.question for r in saved] == [r.question for r in rows]
    model, tok = load_causal_lm(tiny_teacher_dir, device="cpu")
    prompt = tok(format_prompt(tok, rows[0].question, rows[0].domain, cfg.math_suffix), add_special_tokens=False)
    greedy = generate_autoregressive(model, tok, [prompt.input_ids], max(s.length.end for s in cfg.stages))
    assert saved[0].response == greedy.texts[0] != rows[0].response
    lines = [json.loads(ln) for ln in TrainingFolder(out).metrics_file.read_text().splitlines()]
    eos = model.generation_config.eos_token_id
    expected = mdm_step_tokens(cfg, saved, tok, eos, recipe.seed)  # each step's drawn completions, cut at its cap
    assert [m["rollout_tokens"] for m in lines] == [next(expected) for _ in lines]

    def no_model(*args, **kwargs):
        raise AssertionError("the cached completions must be read, not generated again")

    monkeypatch.setattr(runners, "load_runner", no_model)
    train(recipe, out, teacher=str(tiny_teacher_dir), student=str(tiny_student_dir), console=False)  # resumes
    assert len(TrainingFolder(out).metrics_file.read_text().splitlines()) > len(lines)
