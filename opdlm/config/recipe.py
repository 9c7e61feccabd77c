"""The recipe: one YAML file that drives the CLI, Prefect, DVC and MLflow (one source of truth).

Each section is its own class in its own module; this file only composes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from opdlm.config.base import StrictModel, apply_overrides, load_yaml, validate_config
from opdlm.config.eval import EvalConfig
from opdlm.config.registry import RegistryConfig
from opdlm.config.resources import ResourcesConfig
from opdlm.config.sampler import SamplerConfig
from opdlm.config.teacher import TeacherConfig
from opdlm.config.train import TrainConfig
from opdlm.errors import ConfigError


class DataConfig(StrictModel):
    """Training prompts."""

    source: str = Field("builtin:synthetic", description="Dataset source: builtin:synthetic, a local JSONL path, ...")
    path: str | None = Field(None, description="Local normalised JSONL (set by the download stage or by hand).")
    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> the source's field name, e.g. {answer: ground_truth_answer} (paper data).",
    )
    limit: int | None = Field(
        None, ge=1, description="Keep the first N rows (builtin:synthetic: train.num_prompts when unset)."
    )


class ConvertConfig(StrictModel):
    """How the teacher becomes a student (METHOD §2) and how its prompts look (METHOD §6).

    Every field is stamped into the student's config.json, so training, evaluation, ``opdlm
    generate`` and serving read it from the model. ``enable_thinking`` lives here, once: the
    teacher bootstrap and the teacher's evaluation read it from this section too.
    """

    student_source: str | None = Field(
        None,
        description="Start from a released block-diffusion checkpoint instead of converting the teacher: "
        "hf://divelab/Qwen3-4B-a2d-init, hf://JetLM/SDAR-4B-Chat, s3://... or a local directory "
        "(imported with its weights unchanged; its declared block size must equal block_size).",
    )
    block_size: int = Field(4, ge=1, description="Block size B.")
    logit_shift: bool = Field(False, description="Position j-1 predicts token j (Fast-dLLM v2 style).")
    prompt_attention: Literal["block", "causal"] = Field(
        "block",
        description="block: the prompt is bidirectional inside B-blocks counted back from the response start "
        "(the paper's); causal: a plain causal prompt.",
    )
    enable_thinking: bool = Field(
        False,
        description="The chat template's enable_thinking for every prompt (false: Qwen3 non-thinking mode, "
        "the paper's default; true for its thinking variants). Tokenizers without the variable ignore it.",
    )


class Recipe(StrictModel):
    """A whole run: data -> teacher -> convert -> train -> eval -> register."""

    name: str = Field("tiny", description="Run / registered-model name.")
    seed: int = Field(0, description="Global seed.")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    convert: ConvertConfig = Field(default_factory=ConvertConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="Evaluation and serving sampler.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="On-policy distillation training.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation of student and teacher.")
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig, description="MLflow registration and champion gate."
    )
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Machines and GPUs for training.")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), trains: bool = True) -> Recipe:
    """Load and validate a recipe YAML with dotted overrides.

    Args:
        trains: the caller trains (or stages a training run) from it, so the recipe must list its
            ``train.stages``; ``opdlm eval --config`` reads only the eval and sampler sections.

    Raises:
        ConfigError: the file or an override does not validate, or a recipe to train from does not
            say what it trains: a file without ``train.stages`` (an empty file, a missing ``train:``
            section) would otherwise start the built-in defaults' long run, which nobody asked for.
    """
    data = apply_overrides(load_yaml(path), list(overrides))
    train = data.get("train")
    if trains and (not isinstance(train, dict) or not train.get("stages")):
        what = "has no train section" if not isinstance(train, dict) else "has no train.stages"
        raise ConfigError(f"{path}: the recipe {what}; a recipe must list what it trains (see configs/tiny.yaml)")
    return validate_config(Recipe, data, source=str(path))
