"""Typed configs: dotted overrides and one-line errors a person understands."""

from pathlib import Path

import pytest

from opdlm.config.base import apply_overrides, load_config, validate_config
from opdlm.config.recipe import Recipe, load_recipe
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import ConfigError


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides(
        {"sampler": {"threshold": 0.9}}, ["sampler.threshold=0.5", "seed=3", "name=x", "convert.logit_shift=true"]
    )
    recipe = validate_config(Recipe, data)
    assert recipe.sampler.threshold == 0.5 and recipe.seed == 3 and recipe.convert.logit_shift is True


def test_list_index_override():
    assert apply_overrides({"a": [{"x": 1}, {"x": 2}]}, ["a.1.x=5"]) == {"a": [{"x": 1}, {"x": 5}]}
    with pytest.raises(ConfigError, match="out of range"):
        apply_overrides({"a": [1]}, ["a.3=5"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("sampler.thresold=0.5", "unknown key 'sampler.thresold'; did you mean 'threshold'"),
        ("sampler.threshold=1.5", "sampler.threshold: Input should be less than or equal to 1 (got 1.5)"),
        ("sampler.denoise_steps_per_block=8", "denoise_steps_per_block (8) must be <= block_size (4)"),
        ("sampler.remasking=sometimes", "sampler.remasking"),
        ("nonsense", "must look like key=value"),
    ],
)
def test_errors_name_the_field(override, message):
    with pytest.raises(ConfigError) as exc:
        validate_config(Recipe, apply_overrides({}, [override]), source="recipe.yaml")
    text = str(exc.value)
    assert message in text and "\n" not in text


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampler: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_recipe(bad)


def test_sampler_with_overrides_clamps_steps():
    cfg = SamplerConfig(block_size=4, denoise_steps_per_block=4).with_overrides(block_size=2, threshold=None)
    assert cfg.block_size == 2 and cfg.denoise_steps_per_block == 2 and cfg.threshold == 0.9


def test_load_config_roundtrip(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("block_size: 8\ndenoise_steps_per_block: 8\n")
    assert load_config(SamplerConfig, p, ["threshold=0.8"]).threshold == 0.8


# --- rules between sections: checked when the recipe loads (Recipe._consistent), one line naming the fields ----------

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
LAST_AT_8 = "train.stages.2.block_size=8"  # tiny's last stage


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["train.rollout.block_size=8"],
            "train.rollout.block_size (8) must equal convert.block_size (4): rollouts start from the converted student",
        ),
        (
            ["sampler.block_size=8"],
            "sampler.block_size (8) must equal the block size training ends with (4, convert.block_size)",
        ),
        (
            [LAST_AT_8, "eval.sweep_block_sizes=[4,8]", "sampler.block_size=4"],
            "sampler.block_size (4) must equal the block size training ends with (8, train.stages.2.block_size)",
        ),
        (["convert.block_size=8"], "eval.sweep_block_sizes [4] must include 8, the block size training ends with"),
        ([LAST_AT_8], "eval.sweep_block_sizes [4] must include 8, the block size training ends with (train.stages.2"),
        (
            ["convert.block_size=2", "eval.sweep_block_sizes=[2]"],
            "sampler: denoise_steps_per_block (4) must be <= block_size (2)",
        ),
        (
            ["train.stages.0.block_size=2"],
            "stage 'short': rollout.denoise_steps_per_block (4) must be <= block_size (2)",
        ),
        (
            ["registry.gate_benchmark=gsm8k"],
            "registry.gate_benchmark 'gsm8k' must be one of eval.benchmarks (synthetic)",
        ),
        (
            ["resources.launcher=deepspeed", "resources.gpus_per_node=2"],
            "resources.launcher is 'deepspeed' but train.deepspeed is not set",
        ),
        (
            ["train.deepspeed=configs/deepspeed/zero2.json", "resources.nodes=2", "resources.gpus_per_node=8"],
            "resources.hostfile is not set but deepspeed on 2 nodes (resources.nodes) needs one",
        ),
    ],
)
def test_inconsistent_sections_fail_when_the_recipe_loads(overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_recipe(TINY, overrides)
    text = str(exc.value)
    assert text.startswith(f"{TINY}: ") and message in text and "\n" not in text, text


def test_block_size_follows_convert_where_a_recipe_leaves_it_out():
    r = load_recipe(TINY, ["convert.block_size=8", "eval.sweep_block_sizes=[4,8]"])
    assert (r.convert.block_size, r.train.rollout.block_size, r.sampler.block_size) == (8, 8, 8)
    assert r.train.rollout.denoise_steps_per_block == r.sampler.denoise_steps_per_block == 4  # as tiny.yaml says
    # sections left out entirely: the defaults at B, steps per block clamped to it as with_overrides does
    bare = validate_config(Recipe, {"convert": {"block_size": 2}, "eval": {"sweep_block_sizes": [2, 4]}})
    assert (bare.train.rollout.block_size, bare.train.rollout.denoise_steps_per_block) == (2, 2)
    assert (bare.sampler.block_size, bare.sampler.denoise_steps_per_block) == (2, 2)
    assert bare.train.rollout.temperature == 1.0  # still the paper's rollout sampler
    # a stage's own block size: its rollouts use it, and the student ends training (and is evaluated) at it
    staged = load_recipe(TINY, [LAST_AT_8, "eval.sweep_block_sizes=[4,8]"])
    assert (staged.train.rollout.block_size, staged.train.final_block_size, staged.sampler.block_size) == (4, 8, 8)


def test_the_gate_benchmark_follows_eval_benchmarks_where_a_recipe_leaves_it_out():
    recipe = validate_config(Recipe, {"eval": {"benchmarks": ["gsm8k", "math500"]}})
    assert recipe.registry.gate_benchmark == "gsm8k"
    assert validate_config(Recipe, {}).registry.gate_benchmark == "synthetic"


def test_a_resolved_recipe_dump_loads_back_unchanged():
    """The pipeline stores the resolved recipe (every derived value spelt out) and later stages reload it."""
    recipe = load_recipe(TINY, [LAST_AT_8, "eval.sweep_block_sizes=[4,8]"])
    assert validate_config(Recipe, recipe.model_dump(mode="json")) == recipe
