"""The recipe: one YAML file that drives the CLI, Prefect, DVC and MLflow (one source of truth).

Each section is its own class in its own module; this file composes them and holds the rules that
tie sections together (:meth:`Recipe._derive` fills what one section takes from another,
:meth:`Recipe._consistent` refuses what contradicts), so every inconsistency fails when the recipe
loads, before any data, teacher or training work starts.

Block size has one home, ``convert.block_size``: ``train.rollout.block_size`` follows it, a stage
may change it for its own rollouts (``train.stages[].block_size``), and ``sampler.block_size`` (the
evaluation and serving sampler) follows the block size training ends with. A recipe may still spell
those out; they must then agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from opdlm.config.base import (
    TRAINING_SEED_MAX,
    StrictModel,
    apply_overrides,
    check_existing,
    is_local_source,
    load_yaml,
    validate_config,
)
from opdlm.config.eval import EvalConfig
from opdlm.config.registry import RegistryConfig
from opdlm.config.resources import ResourcesConfig
from opdlm.config.sampler import SamplerConfig
from opdlm.config.teacher import TeacherConfig
from opdlm.config.train import TrainConfig
from opdlm.errors import ConfigError

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: anything longer is no path


class DataConfig(StrictModel):
    """Training prompts."""

    source: str = Field(
        "builtin:synthetic",
        description="Dataset source: builtin:synthetic, builtin:gsm-symbolic (real GSM8K problems, training "
        "templates only), a local JSONL path, hf://datasets/..., s3://..., https://...",
    )
    path: str | None = Field(None, description="Local normalised JSONL (set by the download stage or by hand).")
    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> the source's field name, e.g. {answer: ground_truth_answer} (paper data).",
    )
    limit: int | None = Field(
        None, ge=1, description="Keep the first N rows (builtin: sources: train.num_prompts when unset)."
    )
    skills: list[str] | None = Field(
        None,
        description="Train only on rows of these skills (a row's `skill` field; builtin:synthetic: "
        "addition, sorting, reversal, chain). None: every row. Evaluation still scores every skill.",
    )
    responses: Literal["reference", "teacher_greedy"] = Field(
        "reference",
        description="What mdm_sft trains on: the rows' reference responses, or the teacher's own greedy "
        "completions of the same prompts (sequence-level distillation; generated once per teacher and "
        "prompt set, cached by content under OPDLM_CACHE).",
    )

    @field_validator("skills")
    @classmethod
    def _skills_listed_once(cls, skills: list[str] | None) -> list[str] | None:
        if skills is None:
            return None
        if not skills:
            raise ValueError("list at least one skill, or leave skills out to train on every row")
        dupes = sorted({s for s in skills if skills.count(s) > 1})
        if dupes:
            raise ValueError(f"skill {dupes[0]!r} is listed more than once")
        return skills

    @model_validator(mode="after")
    def _known_skills(self) -> DataConfig:
        from opdlm.config.skills import SYNTHETIC_SKILLS

        if self.skills and self.source.startswith("builtin:synthetic") and not self.path:
            unknown = [s for s in self.skills if s not in SYNTHETIC_SKILLS]
            if unknown:
                raise ValueError(
                    f"unknown skill {unknown[0]!r} in data.skills; builtin:synthetic has {', '.join(SYNTHETIC_SKILLS)}"
                )
        return self

    @field_validator("source")
    @classmethod
    def _a_source_not_rows(cls, value: str) -> str:
        # a local file is opened by the data stage, the first and cheapest one; its shape is checked here
        if "\n" in value or value.lstrip()[:1] in ("{", "[") or len(value) > MAX_PATH_CHARS:
            raise ValueError(
                "looks like data pasted in, not a source: save the rows to a .jsonl file and give its path "
                "(or builtin:synthetic, hf://datasets/ORG/NAME, s3://..., https://...)"
            )
        return value

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str | None) -> str | None:
        return None if value is None else check_existing(value, "file")


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

    @field_validator("student_source")
    @classmethod
    def _local_student_exists(cls, value: str | None) -> str | None:
        return value if value is None or not is_local_source(value) else check_existing(value, "directory")

    block_size: int = Field(
        4,
        ge=1,
        description="Block size B, the recipe's one home of it: train.rollout follows it, a stage may change it "
        "for its own rollouts, and sampler follows the block size training ends with.",
    )
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
    seed: int = Field(0, ge=0, le=TRAINING_SEED_MAX, description="Global seed.")
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

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        """Fill what a recipe leaves out from the section that owns the fact.

        ``train.rollout.block_size`` <- ``convert.block_size``; ``sampler.block_size`` <- the block
        size training ends with (the last stage's, else ``convert.block_size``); a section given
        without ``denoise_steps_per_block`` has it clamped to that block size, as
        :meth:`SamplerConfig.with_overrides` does; ``registry.gate_benchmark`` <- the first of
        ``eval.benchmarks``. Values that are not valid yet are left for field validation to name.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        block_size = _field(data.get("convert"), "block_size", ConvertConfig.model_fields["block_size"].default)
        if _is_block_size(block_size):
            train = data.setdefault("train", {})
            if isinstance(train, dict):
                train = data["train"] = dict(train)
                if "rollout" not in train:
                    default = TrainConfig.model_fields["rollout"].default_factory()  # the paper's rollout sampler
                    train["rollout"] = default.with_overrides(block_size=block_size).model_dump()
                else:
                    train["rollout"] = _with_block_size(train["rollout"], block_size)
            final = _last_stage_block_size(train)
            data["sampler"] = _with_block_size(data.get("sampler", {}), final if _is_block_size(final) else block_size)
        benchmarks = _field(data.get("eval"), "benchmarks", None)
        registry = data.setdefault("registry", {})
        if isinstance(registry, dict) and "gate_benchmark" not in registry and benchmarks:
            if isinstance(benchmarks, list) and isinstance(benchmarks[0], str):
                data["registry"] = {**registry, "gate_benchmark": benchmarks[0]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        """The rules between sections; each message names the fields and their values."""
        train, convert = self.train, self.convert
        if train.rollout.block_size != convert.block_size:
            raise ValueError(
                f"train.rollout.block_size ({train.rollout.block_size}) must equal convert.block_size "
                f"({convert.block_size}): rollouts start from the converted student; leave it out to follow "
                "convert.block_size, or set a stage's block_size to change it during training"
            )
        final = train.final_block_size
        last = len(train.stages) - 1
        where = f"train.stages.{last}.block_size" if train.stages[last].block_size else "convert.block_size"
        if self.sampler.block_size != final:
            raise ValueError(
                f"sampler.block_size ({self.sampler.block_size}) must equal the block size training ends with "
                f"({final}, {where}): the trained student is evaluated and served at it; leave it out to follow it"
            )
        if final not in self.eval.sweep_block_sizes:
            raise ValueError(
                f"eval.sweep_block_sizes {self.eval.sweep_block_sizes} must include {final}, the block size training "
                f"ends with ({where}): the sweep's other block sizes are read against it"
            )
        if self.registry.gate_benchmark not in self.eval.benchmarks:
            raise ValueError(
                f"registry.gate_benchmark {self.registry.gate_benchmark!r} must be one of eval.benchmarks "
                f"({', '.join(self.eval.benchmarks)}): the champion gate compares scores the eval stage measured"
            )
        gated = [k for k in ("min_agreement", "max_nll_ratio") if getattr(self.registry, k) is not None]
        if gated and not self.eval.retention:
            raise ValueError(
                f"registry.{gated[0]} gates on the teacher-retention metrics, but eval.retention is false: "
                "set eval.retention: true or drop the gate"
            )
        if self.data.responses == "teacher_greedy" and train.objective != "mdm_sft":
            raise ValueError(
                f"data.responses=teacher_greedy trains on the teacher's completions, which only mdm_sft reads "
                f"(train.objective is {train.objective}); leave data.responses at reference"
            )
        if problem := self.resources.deepspeed_problem(train.deepspeed):
            raise ValueError(problem)
        if problem := self._no_op_setting():
            raise ValueError(problem)
        if self.resources.hostfile and self.resources.resolve_launcher(train.deepspeed) == "deepspeed":
            try:  # the job script writes it before `opdlm launch` loads the recipe
                check_existing(self.resources.hostfile, "file")
            except ValueError as exc:
                raise ValueError(f"resources.hostfile: {exc}") from None
        return self

    def _no_op_setting(self) -> str | None:
        """A setting another section makes a no-op (None: none); see :meth:`TrainConfig._no_op_setting`."""
        from opdlm.config.teacher import BootstrapConfig

        if not self.teacher.source.startswith("builtin:"):
            default = BootstrapConfig().model_dump(exclude={"progress"})
            if self.teacher.bootstrap.model_dump(exclude={"progress"}) != default:
                return (
                    f"teacher.bootstrap is set but teacher.source is {self.teacher.source!r}: only a builtin: teacher "
                    "is trained from it; remove teacher.bootstrap or use teacher.source=builtin:tiny"
                )
        if self.data.field_map and self.data.source.startswith("builtin:") and not self.data.path:
            return (
                f"data.field_map is set but data.source is {self.data.source!r}, whose rows already use the "
                "canonical fields; it renames the fields of a file or download"
            )
        launcher = self.resources.resolve_launcher(self.train.deepspeed)
        if self.resources.hostfile and launcher != "deepspeed":
            return (
                f"resources.hostfile is set but the launcher is {launcher!r}: only DeepSpeed's launcher reads it "
                "(set train.deepspeed and GPUs, or remove resources.hostfile)"
            )
        if self.eval.lm_eval_include_path and not self.eval.lm_eval_tasks:
            return "eval.lm_eval_include_path is set but eval.lm_eval_tasks is empty: no lm-eval task would read it"
        return None


def _field(section: Any, name: str, default: Any) -> Any:
    """``section.name`` of a raw section (a mapping or an already built config), else ``default``."""
    if isinstance(section, dict):
        return section.get(name, default)
    return getattr(section, name, default) if isinstance(section, StrictModel) else default


def _is_block_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _with_block_size(section: Any, block_size: int) -> Any:
    """A raw sampler section with ``block_size`` filled in when it has none (steps per block clamped to it)."""
    if not isinstance(section, dict) or "block_size" in section:
        return section
    out = {**section, "block_size": block_size}
    if "denoise_steps_per_block" not in section:
        out["denoise_steps_per_block"] = min(SamplerConfig.model_fields["denoise_steps_per_block"].default, block_size)
    return out


def _last_stage_block_size(train: Any) -> Any:
    """The last stage's own ``block_size`` in a raw train section (None: it follows ``train.rollout``)."""
    stages = _field(train, "stages", None)
    if not isinstance(stages, list) or not stages:
        return None
    return _field(stages[-1], "block_size", None)


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
