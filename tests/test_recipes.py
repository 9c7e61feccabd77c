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
