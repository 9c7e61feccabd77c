"""Every shipped recipe (configs/*.yaml) loads, validates and says how to launch itself; paper values hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opdlm.config.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))
# name -> (teacher, KL, thinking): the reference's launchers (divelab/OPDLM scripts/) and METHOD §4-6
PAPER = {
    "qwen3-0.6b": ("Qwen3-0.6B", "full", False),
    "qwen3-1.7b": ("Qwen3-1.7B", "full", False),
    "qwen3-4b": ("Qwen3-4B", "top_k", False),
    "qwen3-8b": ("Qwen3-8B", "top_k", False),
    "qwen3-4b-math": ("Qwen3-4B", "full", False),
    "qwen3-4b-math-thinking": ("Qwen3-4B", "full", True),
}


def _is_study(path: Path) -> bool:
    return "study" in (yaml.safe_load(path.read_text()) or {})


def test_the_expected_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {"tiny", *PAPER} <= names, sorted(names)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_its_header_has_the_launch_command(path):
    header = "".join(ln for ln in path.read_text().splitlines(keepends=True) if ln.startswith("#"))
    if _is_study(path):
        from opdlm.study.config import load_study

        load_study(path)
        assert f"configs/{path.name}" in header
        return
    recipe = load_recipe(path)
    assert f"train --config configs/{path.name}" in header, f"{path.name}: header lacks its exact launch command"
    assert recipe.name == path.stem
    for ds in filter(None, [recipe.train.deepspeed, recipe.train.teacher_deepspeed]):
        assert (REPO / ds).is_file(), f"{path.name}: {ds} does not exist"
    assert recipe.train.rollout.block_size == recipe.convert.block_size


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_carry_the_paper_values(name):
    model, kl, thinking = PAPER[name]
    r = load_recipe(REPO / "configs" / f"{name}.yaml")
    header = (REPO / "configs" / f"{name}.yaml").read_text()
    assert r.teacher.source == f"hf://Qwen/{model}" and f"--teacher hf://Qwen/{model}" in header
    t = r.train
    assert (t.kl, t.kl_top_k if t.kl == "top_k" else 16) == (kl, 16)
    assert (r.convert.prompt_attention, r.convert.enable_thinking, r.convert.logit_shift) == ("block", thinking, False)
    assert t.max_prompt_tokens == 2000 and t.math_suffix
    assert (t.rollout.block_size, t.rollout.denoise_steps_per_block, t.rollout.remasking) == (4, 4, "dynamic")
    assert (t.rollout.threshold, t.rollout.temperature) == (0.9, 1.0)
    assert (t.prompts_per_rollout, t.optimizer_steps_per_rollout) == (128, 16)
    assert (t.lr, t.min_lr, t.warmup_rollout_steps, t.weight_decay, t.grad_clip) == (1e-5, 1e-6, 5, 0.0, 1.0)
    assert t.precision == "bf16" and t.gradient_checkpointing and t.exclude_eos_from_loss
    assert t.state_selection == "one_per_block" and t.deepspeed and r.resources.gpus_per_node == 8
    (stage,) = t.stages
    if name.endswith("math-thinking"):
        assert (stage.length.start, stage.length.end, stage.length.ramp_steps) == (100, 8000, 200)
        assert stage.rollout_steps == 625 and stage.domain_caps["math"] >= 8000
    elif name.endswith("math"):
        assert (stage.length.start, stage.length.end, stage.length.ramp_steps) == (100, 2000, 100)
        assert stage.rollout_steps == 625
    else:
        assert stage.rollout_steps == 483
        assert (stage.length.start, stage.length.end, stage.length.ramp_steps) == (100, 4000, 100)
        assert {k: stage.domain_caps[k] for k in ("math", "code", "chat", "science")} == {
            "math": 4096,
            "code": 2048,
            "chat": 2048,
            "science": 1024,
        }
    assert (r.sampler.remasking, r.sampler.temperature, r.sampler.block_size) == ("static", 0.0, 4)


def test_tiny_recipe_is_the_cpu_default_with_several_stages():
    r = load_recipe(REPO / "configs" / "tiny.yaml")
    assert r.data.source == "builtin:synthetic" and r.teacher.source == "builtin:tiny"
    assert len(r.train.stages) >= 2 and r.train.deepspeed is None and r.train.device == "cpu"
    assert r.eval.benchmarks == ["synthetic"] and r.registry.min_retention == 0.9


# --- block size has one home (issue 17): the effective per-stage rollout samplers did not change ----------------------

# Computed once from main's code at 6c528b6, before block size had one home (every recipe then spelt
# block_size out in convert, sampler and train.rollout): `cfg.rollout.with_overrides(block_size=
# cfg.stage_block_size(stage), threshold=stage.threshold)` and `length_cap(stage.length, step, B)`.
_ROLLOUT = {"block_size": 4, "denoise_steps_per_block": 4, "remasking": "dynamic", "threshold": 0.9}
_ROLLOUT |= {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
_STATIC = {"block_size": 4, "denoise_steps_per_block": 4, "remasking": "static", "threshold": 0.9}
_STATIC |= {"temperature": 0.0, "top_k": 0, "top_p": 1.0}
_PAPER_CAPS = {0: 100, 1: 100, 50: 1244, 100: 4000, 482: 4000}
_STUDY = ({**_STATIC, "max_new_tokens": 80}, {"main": (_ROLLOUT, {0: 16, 1: 16, 4: 36, 8: 80, 999: 80})})
BEFORE = {  # recipe -> (sampler, {stage: (rollout sampler without max_new_tokens, {step in stage: length cap})})
    "qwen3-0.6b.yaml": ({**_STATIC, "max_new_tokens": 4000}, {"main": (_ROLLOUT, _PAPER_CAPS)}),
    "qwen3-1.7b.yaml": ({**_STATIC, "max_new_tokens": 4000}, {"main": (_ROLLOUT, _PAPER_CAPS)}),
    "qwen3-4b.yaml": ({**_STATIC, "max_new_tokens": 4000}, {"main": (_ROLLOUT, _PAPER_CAPS)}),
    "qwen3-8b.yaml": ({**_STATIC, "max_new_tokens": 4000}, {"main": (_ROLLOUT, _PAPER_CAPS)}),
    "qwen3-4b-math.yaml": (
        {**_STATIC, "max_new_tokens": 2000},
        {"main": (_ROLLOUT, {0: 100, 1: 100, 50: 656, 100: 2000, 624: 2000})},
    ),
    "qwen3-4b-math-thinking.yaml": (
        {**_STATIC, "max_new_tokens": 8000},
        {"main": (_ROLLOUT, {0: 100, 1: 100, 100: 2412, 200: 8000, 624: 8000})},
    ),
    "study.yaml": _STUDY,
    "study.yaml --quick": _STUDY,
    "tiny.yaml": (
        {**_ROLLOUT, "threshold": 0.95, "temperature": 0.0, "max_new_tokens": 64},
        {
            "short": (_ROLLOUT, {0: 16, 1: 16, 20: 20, 39: 32, 40: 32}),
            "medium": (_ROLLOUT, {0: 32, 1: 32, 5: 40, 10: 64, 19: 64}),
            "full": (_ROLLOUT, {0: 64, 1: 64, 49: 64}),
        },
    ),
}


def _shipped(key: str):
    name, _, flag = key.partition(" ")
    if name.startswith("study"):
        from opdlm.study.config import load_study

        return load_study(REPO / "configs" / name, quick=flag == "--quick").recipe
    return load_recipe(REPO / "configs" / name)


# recipes added after the one-home-of-B refactor: nothing to compare with (their own tests pin their values)
AFTER_THE_REFACTOR = {"smollm2-135m.yaml"}


def test_every_shipped_recipe_is_in_the_before_table():
    assert {k.split(" ")[0] for k in BEFORE} == {p.name for p in RECIPES} - AFTER_THE_REFACTOR


@pytest.mark.parametrize("key", sorted(BEFORE))
def test_derived_block_sizes_give_the_samplers_the_code_gave_before(key):
    """convert.block_size is the recipes' one home of B; what each stage rolls out with is what it was."""
    from opdlm.train.curriculum import rollout_sampler

    sampler, stages = BEFORE[key]
    recipe = _shipped(key)
    assert recipe.convert.block_size == 4 and recipe.train.rollout.block_size == 4
    assert recipe.sampler.model_dump() == sampler
    by_name = {s.name: s for s in recipe.train.stages}
    assert list(by_name) == list(stages)
    for name, (rollout, caps) in stages.items():
        for step, cap in caps.items():
            assert rollout_sampler(recipe.train, by_name[name], step).model_dump() == {**rollout, "max_new_tokens": cap}


def test_a_stage_block_size_changes_that_stage_and_what_the_student_is_evaluated_at():
    """tiny's fast variant (its header) with the last stage at B=8; the stage samplers as main's code gave them."""
    from opdlm.train.curriculum import rollout_sampler

    stages = (
        "train.stages=[{name: short, rollout_steps: 2, length: {start: 8, end: 8}}, {name: full, rollout_steps: 2, "
        "length: {start: 8, end: 16, ramp_steps: 1}, threshold: 0.8, block_size: 8}]"
    )
    recipe = load_recipe(REPO / "configs" / "tiny.yaml", [stages, "eval.sweep_block_sizes=[4,8]"])
    short, full = recipe.train.stages
    assert [rollout_sampler(recipe.train, short, s).model_dump() for s in range(3)] == [
        {**_ROLLOUT, "max_new_tokens": 8}
    ] * 3
    full_rollout = {**_ROLLOUT, "block_size": 8, "threshold": 0.8}
    assert [rollout_sampler(recipe.train, full, s).model_dump()["max_new_tokens"] for s in range(3)] == [8, 16, 16]
    assert rollout_sampler(recipe.train, full, 0).model_dump() == {**full_rollout, "max_new_tokens": 8}
    # the student ends training at B=8 (its config.json says so), so it is evaluated and served at 8
    assert (recipe.convert.block_size, recipe.train.final_block_size, recipe.sampler.block_size) == (4, 8, 8)


# --- a bad recipe fails before any work: one line, in seconds, no run folder ------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["pipeline", "--recipe", "{recipe}"],
        ["stage", "data", "--recipe", "{recipe}", "--out", "{tmp}/data/train.jsonl"],  # dvc repro's first stage
        ["train", "--config", "{recipe}", "--out", "{tmp}/train", "--teacher", "{tmp}/no-teacher"],
    ],
    ids=["pipeline", "dvc-first-stage", "train"],
)
def test_an_inconsistent_recipe_fails_at_once_and_writes_nothing(tmp_path, command):
    import os
    import subprocess
    import sys
    import time

    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "tiny.yaml").read_text().replace("  block_size: 4 ", "  block_size: 8 ", 1))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPDLM_RUNS_DIR": str(tmp_path / "runs")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlruns.db"
    argv = [a.format(recipe=bad, tmp=tmp_path) for a in command]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "opdlm.cli.main", *argv], capture_output=True, text=True, env=env, timeout=120, cwd=REPO
    )
    seconds = time.monotonic() - start
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"error: {bad}: eval.sweep_block_sizes [4] must include 8" in lines[0] and "convert.block_size" in lines[0]
    assert seconds < 30, seconds  # the CLI's imports and the recipe, nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no run folder, no data, no MLflow store


def test_a_student_stored_with_another_prompt_format_fails_before_the_teacher_is_fetched(
    tiny_teacher_dir, tmp_path, capsys
):
    """Stored-vs-recipe checks need the student's config.json: they read it before data or teacher are fetched."""
    from opdlm.cli.main import main
    from opdlm.sources.convert import convert_teacher

    causal = convert_teacher(tiny_teacher_dir, tmp_path / "causal", block_size=4, prompt_attention="causal")
    out = tmp_path / "run"
    teacher = tmp_path / "no-such-teacher"  # resolving it would fail: the student's check must come first
    args = ["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(out), "--student", str(causal)]
    assert main([*args, "--teacher", str(teacher)]) == 2
    err = capsys.readouterr().err
    assert "the student has prompt_attention=causal" in err and "convert.prompt_attention is block" in err, err
    assert not out.exists()
