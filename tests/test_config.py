"""Typed configs: dotted overrides and one-line errors a person understands."""

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
