"""Typed, validated configs: one YAML recipe drives the CLI, Prefect, DVC and MLflow alike."""

from opdlm.config.base import StrictModel, apply_overrides, load_config, load_yaml, validate_config
from opdlm.config.sampler import SamplerConfig

__all__ = [
    "SamplerConfig",
    "StrictModel",
    "apply_overrides",
    "load_config",
    "load_yaml",
    "validate_config",
]
