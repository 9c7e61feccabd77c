"""The study file: a recipe (inline, optionally on top of a base recipe file) plus a ``study`` section.

One YAML drives the whole study: the ``recipe`` is what every arm starts from (data, teacher,
conversion, evaluation sampler, training, the eval limits and the sweep grid in ``recipe.eval``), and
``study`` says which arms to train on top of it. ``quick`` lists dotted overrides that shrink the
study to CI size; ``--quick`` applies them before the command line's own overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from opdlm.config.base import TRAINING_SEED_MAX, StrictModel, apply_overrides, load_yaml, validate_config
from opdlm.config.recipe import Recipe
from opdlm.errors import ConfigError

# a training seed of one arm (the recipe's seed range)
Seed = Annotated[int, Field(ge=0, le=TRAINING_SEED_MAX)]

Objective = Literal["opd", "mdm_sft"]
Section = Literal["main", "heldout"]
Responses = Literal["reference", "teacher_greedy"]


def positive_sorted_budgets(values: list[int]) -> list[int]:
    """A section's training-token budgets: each >= 1, deduplicated, ascending."""
    bad = [v for v in values if v < 1]
    if bad:
        raise ValueError(f"every budget must be >= 1 token (got {bad[0]})")
    return sorted(set(values))


def listed_once(kind: str, values: list) -> list:
    """``values`` unchanged when no value repeats, else ValueError naming the list (sections, skills, baselines)."""
    if len(set(values)) != len(values):
        raise ValueError(f"list each {kind} once (got {values})")
    return values


def check_unique_names(kind: str, names: list[str], seeds: list[int]) -> None:
    """A section's arm names (ablations, splits) and seeds are each listed once."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{kind} names must be unique; {dupes[0]!r} appears more than once")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (got {seeds})")


class AblationConfig(StrictModel):
    """One ablation: the OPD arm with some recipe fields changed, trained at the ablation budget."""

    name: str = Field(
        ..., pattern=r"^[a-z0-9_]+$", description="Short name (lowercase, digits, _), used in arm ids and tables."
    )
    description: str = Field("", description="One line shown in the results table.")
    overrides: list[str] = Field(..., min_length=1, description="Dotted recipe overrides, e.g. train.kl=top_k.")


class StudyConfig(StrictModel):
    """Which arms to train and how to summarise them.

    Budgets count training tokens as the trainer does (``cumulative_train_tokens``): response tokens
    the objective trains on (OPD: the student's rollout tokens; mdm_sft: ground-truth response tokens
    with their EOS), prompts excluded.
    """

    budgets: list[int] = Field(
        ...,
        min_length=1,
        description=(
            "Training-token budgets of the OPD arms; the baseline is matched to the tokens OPD actually used at each."
        ),
    )
    baseline_extra_budgets: list[int] = Field(
        default_factory=list,
        description="Extra, larger budgets for the baseline only (to find where it catches up with OPD).",
    )
    seeds: list[Seed] = Field(
        default_factory=lambda: [0, 1], min_length=1, description="Training seeds of every main arm."
    )
    ablations: list[AblationConfig] = Field(
        default_factory=list, description="OPD variants trained at `ablation_budget`."
    )
    ablation_budget: int | None = Field(
        None, ge=1, description="Token budget of the ablations (default: the largest of `budgets`)."
    )
    ablation_seeds: list[Seed] | None = Field(None, description="Seeds of the ablations (default: `seeds`).")
    baseline_overrides: list[str] = Field(
        default_factory=list,
        description=(
            "Dotted recipe overrides for every mdm_sft arm (e.g. no length ramp: the baseline has no rollouts)."
        ),
    )
    opd_fill_estimate: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description=(
            "Expected rollout length / length cap, used only to turn an OPD budget into rollout steps; the tokens "
            "actually used are measured and reported."
        ),
    )
    sweep_objectives: list[Objective] = Field(
        default_factory=lambda: ["opd", "mdm_sft"],
        description=(
            "Objectives whose model at the largest matched budget (first seed) gets the threshold x block-size sweep "
            "(grid: recipe.eval)."
        ),
    )
    workers: int = Field(
        2, ge=1, description="Arms trained at once, one process each (one CPU thread each: train.num_threads)."
    )
    prune_checkpoints: bool = Field(
        True,
        description=(
            "Delete an arm's checkpoints/ and converted/ once its result is written (its exported model stays)."
        ),
    )
    target_retention: float = Field(
        0.9, gt=0.0, description="Target: OPD accuracy / teacher accuracy at the largest budget."
    )
    target_token_ratio: float = Field(
        10.0, gt=0.0, description="Target: baseline tokens needed to match OPD / OPD's tokens."
    )
    experiment: str = Field("opdlm-study", min_length=1, description="MLflow experiment name.")
    sections: list[Section] = Field(
        default_factory=lambda: ["main", "heldout"],
        min_length=1,
        description=(
            "Which parts to run: main (OPD vs baseline by budget, ablations, sweeps) and heldout (the file's "
            "`heldout` section). E.g. study.sections=[heldout] runs the held-out-skill arms alone."
        ),
    )

    @field_validator("budgets", "baseline_extra_budgets")
    @classmethod
    def _positive_sorted(cls, values: list[int]) -> list[int]:
        return positive_sorted_budgets(values)

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        check_unique_names("ablation", [a.name for a in self.ablations], self.seeds)
        return self

    @field_validator("sections")
    @classmethod
    def _sections_once(cls, sections: list[str]) -> list[str]:
        return listed_once("section", sections)

    @property
    def resolved_ablation_budget(self) -> int:
        return self.ablation_budget if self.ablation_budget is not None else max(self.budgets)

    @property
    def resolved_ablation_seeds(self) -> list[int]:
        return self.ablation_seeds if self.ablation_seeds is not None else list(self.seeds)


class SkillSplit(StrictModel):
    """One split of the synthetic suite's skills: train on ``train``, hold out every other skill."""

    name: str = Field(
        ..., pattern=r"^[a-z0-9_]+$", description="Short name (lowercase, digits, _), used in arm ids and tables."
    )
    train: list[str] = Field(..., min_length=1, description="Skills the training prompts are drawn from.")

    @field_validator("train")
    @classmethod
    def _known(cls, skills: list[str]) -> list[str]:
        from opdlm.config.skills import SYNTHETIC_SKILLS

        unknown = [s for s in skills if s not in SYNTHETIC_SKILLS]
        if unknown:
            raise ValueError(f"unknown skill {unknown[0]!r}; the synthetic suite has {', '.join(SYNTHETIC_SKILLS)}")
        listed_once("skill", skills)
        if len(skills) == len(SYNTHETIC_SKILLS):
            raise ValueError("a split must hold out at least one skill; it lists every skill of the suite")
        return skills

    @property
    def heldout(self) -> list[str]:
        """The suite's skills this split never trains on (suite order)."""
        from opdlm.config.skills import SYNTHETIC_SKILLS

        return [s for s in SYNTHETIC_SKILLS if s not in self.train]


class HeldoutConfig(StrictModel):
    """Skills the conversion data never covers: train on some skills of the suite, score every skill.

    Every arm (OPD and each baseline, at each budget, seed and split) trains on the prompts of its
    split's skills only (``data.skills``); evaluation scores all of them, so each arm has a trained-
    skill and a held-out-skill accuracy, each read against the teacher's on the same skills.
    """

    budgets: list[int] = Field(
        ..., min_length=1, description="OPD training-token budgets; each baseline is matched to what OPD used."
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, description="Training seeds.")
    splits: list[SkillSplit] = Field(..., min_length=1, description="Skill splits (train on some, hold out the rest).")
    baselines: list[Responses] = Field(
        default_factory=lambda: ["reference", "teacher_greedy"],
        description=(
            "mdm_sft arms: on the suite's reference answers, and on the teacher's greedy completions of the same "
            "prompts (data.responses)."
        ),
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="Dotted recipe overrides for every arm of the section (e.g. a smaller prompt pool).",
    )

    @field_validator("budgets")
    @classmethod
    def _positive_sorted(cls, values: list[int]) -> list[int]:
        return positive_sorted_budgets(values)

    @model_validator(mode="after")
    def _consistent(self) -> HeldoutConfig:
        check_unique_names("split", [s.name for s in self.splits], self.seeds)
        listed_once("baseline", self.baselines)
        return self


class StudyFile(StrictModel):
    """The whole study YAML."""

    base_recipe: str | None = Field(
        None, description="Recipe YAML (relative to this file) that `recipe` is merged onto."
    )
    recipe: Recipe = Field(default_factory=Recipe, description="The recipe every arm starts from.")
    study: StudyConfig
    heldout: HeldoutConfig | None = Field(
        None, description="Held-out skills: arms trained on some skills of the suite, scored on all of them."
    )
    quick: list[str] = Field(default_factory=list, description="Dotted overrides applied by --quick (CI size).")

    @model_validator(mode="after")
    def _sections_defined(self) -> StudyFile:
        if "heldout" in self.study.sections and self.heldout is None and "sections" in self.study.model_fields_set:
            raise ValueError("study.sections lists heldout but the file has no heldout section")
        return self

    @property
    def runs_heldout(self) -> bool:
        return "heldout" in self.study.sections and self.heldout is not None


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` merged in: mappings merge key by key, anything else in ``top`` wins."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = (), quick: bool = False) -> StudyFile:
    """Load a study YAML: the base recipe merged under ``recipe``, then ``quick`` overrides (when asked), then
    ``overrides``.

    Every variant's recipe (the study recipe with an ablation's or the baseline's overrides) is validated
    here too (:func:`check_variant_recipes`), so a typo in any of them fails in a second, before any work.

    Raises:
        ConfigError: missing file, bad YAML, an override that does not apply, or a field that does
            not validate (one line naming the field and value, or the arm whose recipe fails).
    """
    path = Path(path)
    data = load_yaml(path)
    base = data.get("base_recipe")
    if base:  # merged first, so overrides can reach fields that only the base recipe spells out
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        recipe = data.get("recipe") or {}
        if not isinstance(recipe, dict):
            raise ConfigError(f"{path}: recipe must be a mapping of recipe sections")
        data["recipe"] = deep_merge(load_yaml(base_path), recipe)
    if quick:
        quick_items = data.get("quick") or []
        if not isinstance(quick_items, list) or not all(isinstance(q, str) for q in quick_items):
            raise ConfigError(f"{path}: quick must be a list of key=value strings")
        data = apply_overrides(data, quick_items)
    data = apply_overrides(data, list(overrides))
    spec = validate_config(StudyFile, data, source=str(path))
    check_variant_recipes(spec, str(path))
    return spec


def variant_data(base: Recipe, overrides: tuple[str, ...] | list[str], objective: str, seed: int) -> dict[str, Any]:
    """The raw recipe of one study variant: ``base`` with its overrides, objective and seed (not validated yet)."""
    return apply_overrides(
        base.model_dump(mode="json"), [*overrides, f"train.objective={objective}", f"train.seed={seed}"]
    )


def check_variant_recipes(spec: StudyFile, source: str) -> None:
    """Validate the recipe of every variant the study trains (the OPD default, each ablation's overrides, the
    baseline's overrides) on top of the study recipe, so a misspelt override fails when the study file loads,
    not after the teacher and the reference evaluation ran. Seeds and budgets change no rule.

    Raises:
        ConfigError: the first variant whose recipe does not validate, named with where its overrides are.
    """
    study = spec.study
    seed = study.seeds[0]
    variants = [("recipe", (), "opd")]
    variants += [(f"study.ablations {a.name!r}", tuple(a.overrides), "opd") for a in study.ablations]
    variants.append(("study.baseline_overrides", tuple(study.baseline_overrides), "mdm_sft"))
    for where, overrides, objective in variants:
        data = variant_data(spec.recipe, overrides, objective, seed)
        validate_config(Recipe, data, source=f"{source}: {where}")
