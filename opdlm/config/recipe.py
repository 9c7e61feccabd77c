"""The recipe: one YAML file that drives the CLI, Prefect, DVC and MLflow (one source of truth).

Each section is its own class in its own module; this file only composes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from opdlm.config.base import StrictModel, load_config
from opdlm.config.eval import EvalConfig
from opdlm.config.registry import RegistryConfig
from opdlm.config.resources import ResourcesConfig
from opdlm.config.sampler import SamplerConfig
from opdlm.config.train import TrainConfig
from opdlm.teacher.config import BootstrapConfig


class DataConfig(StrictModel):
    """Training prompts."""

    source: str = Field("builtin:synthetic", description="Dataset source: builtin:synthetic, a local JSONL path, ...")
    path: str | None = Field(None, description="Local normalised JSONL (set by the download stage or by hand).")
    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> the source's field name, e.g. {answer: ground_truth_answer} (paper data).",
    )
    limit: int | None = Field(None, ge=1, description="Keep the first N rows (builtin:synthetic: train.num_prompts when unset).")


class TeacherConfig(StrictModel):
    """The frozen autoregressive teacher."""

    source: str = Field("builtin:tiny", description="Teacher source: builtin:tiny, a local HF directory, hf://ORG/MODEL.")
    path: str | None = Field(None, description="Local directory of the resolved teacher.")
    bootstrap: BootstrapConfig = Field(
        default_factory=BootstrapConfig, description="builtin:tiny only: how `opdlm teacher bootstrap` trains it."
    )


class ConvertConfig(StrictModel):
    """How the teacher becomes a student (METHOD §2) and how its prompts look (METHOD §6).

    Every field is stamped into the student's config.json, so training, evaluation, ``opdlm
    generate`` and serving read it from the model. ``enable_thinking`` lives here, once: the
    teacher bootstrap and the teacher's evaluation read it from this section too.
    """

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
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow registration and champion gate.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Machines and GPUs for training.")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load and validate a recipe YAML with dotted overrides."""
    return load_config(Recipe, path, overrides)
