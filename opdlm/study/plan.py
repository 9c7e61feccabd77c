"""The study's plan: each arm's rollout steps, its job, which budgets the baseline matches, what is swept.

Pure planning, no training: the study flow (``flows/study.py``) asks these functions what to run and
hands the jobs to its tasks. A job is a JSON-able dict (paths, a recipe as JSON, numbers), so it can
cross a process boundary and its hash names the result it produces.

The study folder::

    OUT/study.json                 the validated study file (and the teacher it used)
    OUT/reference/                 teacher and untrained converted student on the held-out rows
    OUT/arms/<arm id>/             one trained arm: train/ (model, metrics.jsonl), eval.json, result.json
    OUT/sweeps/<arm id>/           one model under every (block size, threshold) of the sweep grid
    OUT/results.json, results.md   the table (held-out skills: its own section); OUT/plots/*.png the figures;
                                   OUT/mlruns.db the MLflow store
"""

from __future__ import annotations

import statistics
from pathlib import Path

from opdlm.config.recipe import Recipe
from opdlm.study.arms import Arm, arm_recipe
from opdlm.study.config import StudyFile

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
PLOT_TOKENS, PLOT_FLOPS = "accuracy_vs_tokens.png", "accuracy_vs_flops.png"
PLOT_PARALLEL = "accuracy_vs_tokens_per_step.png"
PLOT_HELDOUT = "heldout_retention.png"
STUDY_JSON = "study.json"
TOKEN_UNIT = (
    "response tokens trained on, as the trainer's cumulative_train_tokens counts them (OPD: the student's rollout "
    "tokens; baseline: its response tokens with their EOS, cut at the length cap, the suite's ground truth or, for "
    "the held-out section's teacher-completion arms, the teacher's greedy completions; prompts not counted)."
)
FLOPS_UNIT = (
    "the trainer's cumulative estimate (train_summary.json flops.total): rollout decoding by the student, the "
    "teacher's scoring forward passes (OPD only) and the student's forward and backward passes."
)


def resolve_teacher(recipe: Recipe, teacher: str | None) -> Path:
    """The teacher directory: ``teacher``, else ``recipe.teacher.path``, else its source.

    A ``builtin:`` source is bootstrapped with the recipe's ``teacher.bootstrap`` settings (:mod:`opdlm.sources`).
    """
    from opdlm.sources.resolve import resolve_teacher as resolve_recipe_teacher

    return resolve_recipe_teacher(recipe, teacher).absolute()


class Planner:
    """Turns an arm's token budget into rollout steps (rows per seed and the tokenizer loaded once)."""

    def __init__(self, teacher_dir: Path, fill: float, progress: bool = False):
        from transformers import AutoTokenizer

        self.fill, self.teacher_dir, self.progress = fill, teacher_dir, progress
        self.tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        self._rows: dict[tuple, list] = {}

    def rows(self, recipe: Recipe, seed: int) -> list:
        """The training rows an arm of ``recipe`` with ``seed`` draws its prompts from (as the trainer loads them:
        its skills, and the teacher's completions as responses when ``data.responses`` asks for them)."""
        from opdlm.train.data import recipe_training_rows

        data, train = recipe.data, recipe.train
        key = (data.source, data.path, train.num_prompts, seed, tuple(data.skills or ()), data.responses)
        if data.responses == "teacher_greedy":  # the completions depend on the prompt format and the length cap
            key += (train.math_suffix, recipe.convert.enable_thinking, max(s.length.end for s in train.stages))
        if key not in self._rows:
            self._rows[key] = recipe_training_rows(recipe, seed, teacher_dir=self.teacher_dir, progress=self.progress)
        return self._rows[key]

    def plan(self, recipe: Recipe, budget: float) -> tuple[int, float]:
        """``(rollout_steps, planned_tokens)`` for ``recipe`` (an arm's, uncut) to spend ``budget`` tokens."""
        from opdlm.study.budget import plan_steps

        cfg = recipe.train
        seed = cfg.seed if cfg.seed is not None else recipe.seed
        eos_id = self.tokenizer.eos_token_id  # only the count matters: every response gets one EOS
        return plan_steps(
            cfg,
            self.rows(recipe, seed),
            self.tokenizer,
            eos_id,
            seed,
            budget,
            self.fill,
            enable_thinking=recipe.convert.enable_thinking,
        )


def arm_jobs(
    arms: list[Arm] | list[tuple[Arm, dict]],
    spec: StudyFile,
    planner: Planner,
    out: Path,
    teacher_dir: Path,
    teacher_result: dict,
) -> list[dict]:
    """One training job per arm: its folder, its recipe cut to the rollout steps its budget buys.

    An arm may come with tags (a held-out arm's kind, split, skills, budget level): the job carries
    them as ``tags`` and the arm's result copies them.
    """
    jobs = []
    for item in arms:
        arm, tags = item if isinstance(item, tuple) else (item, None)
        uncut = arm_recipe(spec.recipe, arm)
        steps, planned = planner.plan(uncut, arm.budget)
        job = {
            "folder": str(out / "arms" / arm.arm_id),
            "teacher": str(teacher_dir),
            "arm": arm.to_dict(),
            "recipe": arm_recipe(spec.recipe, arm, steps).model_dump(mode="json"),
            "rollout_steps": steps,
            "planned_tokens": planned,
            "teacher_result": teacher_result,
            "prune": spec.study.prune_checkpoints,
        }
        if tags is not None:
            job["tags"] = tags
        jobs.append(job)
    return jobs


def reference_job(spec: StudyFile, out: Path, teacher_dir: Path) -> dict:
    """The job that scores the teacher and the untrained converted student."""
    return {
        "folder": str(out / "reference"),
        "teacher": str(teacher_dir),
        "recipe": spec.recipe.model_dump(mode="json"),
    }


def heldout_matched(opd_results: list[dict], split: str) -> dict[int, int]:
    """OPD budget -> mean tokens the held-out section's OPD arms of ``split`` used at it."""
    by_budget: dict[int, list[int]] = {}
    for r in opd_results:
        if r["group"] == "heldout" and r["objective"] == "opd" and r.get("split") == split:
            by_budget.setdefault(r["budget"], []).append(r["training_tokens"])
    return {b: round(statistics.fmean(t)) for b, t in by_budget.items()}


def matched_budgets(opd_results: list[dict]) -> dict[int, int]:
    """OPD budget -> mean tokens its main arms actually used (the baseline trains at these)."""
    by_budget: dict[int, list[int]] = {}
    for r in opd_results:
        if r["group"] == "main" and r["objective"] == "opd":
            by_budget.setdefault(r["budget"], []).append(r["training_tokens"])
    return {b: round(statistics.fmean(t)) for b, t in by_budget.items()}


def sweep_jobs(spec: StudyFile, out: Path, main_results: list[dict], teacher_accuracy: float) -> list[dict]:
    """One sweep per objective in ``sweep_objectives``: its main arm with the most tokens, first seed.

    Args:
        main_results: the results of the main arms (OPD and baseline) trained so far.
    """
    jobs = []
    first_seed = spec.study.seeds[0]
    largest_opd = max(spec.study.budgets)
    matched = matched_budgets(main_results)
    for objective in spec.study.sweep_objectives:
        budget = largest_opd if objective == "opd" else matched.get(largest_opd)
        chosen = [
            r
            for r in main_results
            if r["group"] == "main"
            and r["objective"] == objective
            and r["budget"] == budget
            and r["seed"] == first_seed
        ]
        if not chosen:
            continue
        r = chosen[0]
        jobs.append(
            {
                "folder": str(out / "sweeps" / r["arm_id"]),
                "model_dir": r["model_dir"],
                "recipe": spec.recipe.model_dump(mode="json"),
                "teacher_accuracy": teacher_accuracy,
                "meta": {
                    "arm_id": r["arm_id"],
                    "objective": objective,
                    "training_tokens": r["training_tokens"],
                    "seed": r["seed"],
                },
            }
        )
    return jobs


# Measured seconds per planned token, relative to the baseline's (2 CPU cores, study recipe): OPD
# decodes its rollouts and runs the teacher, every-round state selection trains ~2.5x the states.
COST_OPD, COST_ALL_ROUNDS, COST_FUTURE_AWARE = 2.0, 2.5, 1.5


def cost_estimate(job: dict) -> float:
    """A rough relative cost of a training job (its planned tokens, weighted as measured): the flow
    starts the longest jobs first, so the workers finish close together."""
    train = job["recipe"]["train"]
    cost = float(job["planned_tokens"])
    if train.get("objective") == "opd":
        cost *= COST_OPD
    if train.get("state_selection") == "all_rounds":
        cost *= COST_ALL_ROUNDS
    if train.get("target") == "future_aware":
        cost *= COST_FUTURE_AWARE
    return cost
