"""The study's arms: which (objective, variant, budget, seed) to train, and each arm's recipe.

An arm is the study recipe with a few dotted overrides (an ablation's, or the baseline's), its seed,
its objective, and a curriculum cut to the rollout steps its token budget buys
(:func:`opdlm.study.budget.truncate_stages`). Arm ids name all of that, so an arm's folder is found
again on a re-run and a finished arm is never trained twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from opdlm.config.base import validate_config
from opdlm.config.recipe import Recipe
from opdlm.study.budget import truncate_stages
from opdlm.study.config import StudyConfig, variant_data

Group = Literal["main", "ablation"]


@dataclass(frozen=True)
class Arm:
    """One training run of the study.

    Attributes:
        group: ``main`` (OPD vs baseline by budget) or ``ablation``.
        objective: ``opd`` or ``mdm_sft``.
        variant: ``default`` or the ablation's name.
        budget: the token budget the arm was planned for.
        seed: training seed (``train.seed``).
        overrides: dotted recipe overrides on top of the study recipe.
        description: one line for tables.
    """

    group: Group
    objective: str
    variant: str
    budget: int
    seed: int
    overrides: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""

    @property
    def arm_id(self) -> str:
        return f"{self.objective}-{self.variant}-b{self.budget}-s{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self) | {"arm_id": self.arm_id, "overrides": list(self.overrides)}


def opd_arms(study: StudyConfig) -> list[Arm]:
    """Every OPD arm that needs no other arm's result: the main budgets and the ablations."""
    main = [Arm("main", "opd", "default", b, s) for b in study.budgets for s in study.seeds]
    ablations = [
        Arm("ablation", "opd", a.name, study.resolved_ablation_budget, s, tuple(a.overrides), a.description)
        for a in study.ablations
        for s in study.resolved_ablation_seeds
    ]
    return main + ablations


def baseline_arms(study: StudyConfig, matched_budgets: dict[int, int]) -> list[Arm]:
    """The mdm_sft arms: one per matched OPD budget (tokens OPD actually used) and per extra budget.

    Args:
        matched_budgets: OPD budget -> mean tokens the OPD arms of that budget used.
    """
    budgets = sorted(set(matched_budgets.values()) | set(study.baseline_extra_budgets))
    overrides = tuple(study.baseline_overrides)
    return [Arm("main", "mdm_sft", "default", b, s, overrides) for b in budgets for s in study.seeds]


def arm_recipe(base: Recipe, arm: Arm, rollout_steps: int | None = None) -> Recipe:
    """The recipe an arm trains with: ``base`` + its overrides, objective and seed, cut to ``rollout_steps``.

    Raises:
        ConfigError: an override that does not apply or does not validate (named in the message).
    """
    data = variant_data(base, arm.overrides, arm.objective, arm.seed)
    recipe = validate_config(Recipe, data, source=f"study arm {arm.arm_id}")
    if rollout_steps is not None:
        data["train"]["stages"] = [
            s.model_dump(mode="json") for s in truncate_stages(recipe.train.stages, rollout_steps)
        ]
        recipe = validate_config(Recipe, data, source=f"study arm {arm.arm_id}")
    return recipe
