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
from opdlm.study.config import HeldoutConfig, SkillSplit, StudyConfig, variant_data

Group = Literal["main", "ablation", "heldout"]


@dataclass(frozen=True)
class Arm:
    """One training run of the study.

    Attributes:
        group: ``main`` (OPD vs baseline by budget), ``ablation`` or ``heldout`` (trained on some skills).
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


# The held-out section's arm kinds: OPD, and mdm_sft on each kind of response (data.responses)
HELDOUT_KINDS = {"reference": "mdm_sft", "teacher_greedy": "mdm_sft_teacher"}


def heldout_variant(split: SkillSplit, kind: str) -> str:
    """An arm's variant name in the held-out section: the split's name, ``_teacher`` for teacher completions."""
    return f"{split.name}_teacher" if kind == "mdm_sft_teacher" else split.name


def heldout_tags(split: SkillSplit, kind: str, budget_level: int) -> dict:
    """What a held-out arm's result carries besides the arm: its kind, split, skills and OPD budget level."""
    return {
        "kind": kind,
        "split": split.name,
        "trained_skills": list(split.train),
        "heldout_skills": split.heldout,
        "budget_level": budget_level,
    }


def _skills_override(split: SkillSplit) -> str:
    return f"data.skills=[{','.join(split.train)}]"


def heldout_opd_arms(heldout: HeldoutConfig) -> list[tuple[Arm, dict]]:
    """The section's OPD arms (split x budget x seed), each with its result tags."""
    return [
        (
            Arm(
                "heldout",
                "opd",
                heldout_variant(split, "opd"),
                b,
                s,
                (*heldout.overrides, _skills_override(split)),
                f"OPD on {'+'.join(split.train)}",
            ),
            heldout_tags(split, "opd", b),
        )
        for b in heldout.budgets
        for split in heldout.splits
        for s in heldout.seeds
    ]


def heldout_baseline_arms(
    heldout: HeldoutConfig, split: SkillSplit, baseline_overrides: list[str], matched: dict[int, int]
) -> list[tuple[Arm, dict]]:
    """The section's mdm_sft arms of one split, each at the tokens its split's OPD arms used.

    Args:
        baseline_overrides: the study's overrides for every mdm_sft arm (``study.baseline_overrides``).
        matched: OPD budget -> mean tokens that split's OPD arms of that budget used.
    """
    out = []
    for responses in heldout.baselines:
        kind = HELDOUT_KINDS[responses]
        overrides = (*heldout.overrides, *baseline_overrides, _skills_override(split), f"data.responses={responses}")
        what = "the teacher's greedy completions" if responses == "teacher_greedy" else "reference answers"
        for level, tokens in sorted(matched.items()):
            for s in heldout.seeds:
                arm = Arm(
                    "heldout",
                    "mdm_sft",
                    heldout_variant(split, kind),
                    tokens,
                    s,
                    overrides,
                    f"mdm_sft on {what} of {'+'.join(split.train)}",
                )
                out.append((arm, heldout_tags(split, kind, level)))
    return out


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
