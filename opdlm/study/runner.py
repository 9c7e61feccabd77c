"""The study from top to bottom: reference -> OPD arms -> baseline arms at OPD's tokens -> sweeps -> report.

1. Resolve the teacher (``--teacher DIR``, else the recipe's source: ``builtin:tiny`` bootstraps
   into the cache), score it and the untrained converted student on the held-out rows.
2. Plan and train every OPD arm (main budgets x seeds, ablations x seeds); each arm's rollout steps
   come from its token budget (:mod:`opdlm.study.budget`), its tokens are measured.
3. Train the baseline at the tokens the OPD arms actually used (mean over seeds, per budget), plus
   the extra baseline budgets; its tokens per step are known exactly, so these budgets match.
4. Sweep thresholds x block sizes on the chosen models.
5. Write ``results.json``, ``results.md`` and the plots; log everything to MLflow.

Every step writes its own result file, so a re-run with the same ``--out`` skips what is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path

from opdlm.config.recipe import Recipe
from opdlm.errors import OpdlmError
from opdlm.fsutil import atomic_write_text
from opdlm.study.arms import Arm, arm_recipe, baseline_arms, opd_arms
from opdlm.study.config import StudyFile
from opdlm.study.jobs import run_arm, run_reference, run_sweep
from opdlm.study.pool import run_jobs
from opdlm.study.table import markdown, summarize, table_row

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
PLOT_TOKENS, PLOT_PARALLEL = "accuracy_vs_tokens.png", "accuracy_vs_tokens_per_step.png"
LOCK_NAME = ".study.lock"
TOKEN_UNIT = (
    "response tokens trained on, as the trainer's cumulative_train_tokens counts them (OPD: the student's rollout "
    "tokens; baseline: ground-truth response tokens with their EOS, cut at the length cap; prompts not counted)."
)


def resolve_teacher(recipe: Recipe, teacher: str | None) -> Path:
    """The teacher directory: ``teacher``, else ``recipe.teacher.path``, else its source (bootstrapped when builtin)."""
    from opdlm.sources.resolve import resolve_teacher as resolve_recipe_teacher

    return resolve_recipe_teacher(recipe, teacher)


class Planner:
    """Turns an arm's token budget into rollout steps (rows per seed and the tokenizer loaded once)."""

    def __init__(self, teacher_dir: Path, fill: float):
        from transformers import AutoTokenizer

        self.fill = fill
        self.tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        self._rows: dict[tuple, list] = {}

    def rows(self, recipe: Recipe, seed: int) -> list:
        """The training rows an arm of ``recipe`` with ``seed`` draws its prompts from (as the trainer loads them)."""
        from opdlm.train.data import load_training_rows

        key = (recipe.data.source, recipe.data.path, recipe.train.num_prompts, seed)
        if key not in self._rows:
            self._rows[key] = load_training_rows(*key)
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


def _arm_jobs(
    arms: list[Arm], spec: StudyFile, planner: Planner, out: Path, teacher_dir: Path, teacher_result: dict
) -> list[dict]:
    jobs = []
    for arm in arms:
        uncut = arm_recipe(spec.recipe, arm)
        steps, planned = planner.plan(uncut, arm.budget)
        jobs.append(
            {
                "folder": str(out / "arms" / arm.arm_id),
                "teacher": str(teacher_dir),
                "arm": arm.to_dict(),
                "recipe": arm_recipe(spec.recipe, arm, steps).model_dump(mode="json"),
                "rollout_steps": steps,
                "planned_tokens": planned,
                "teacher_result": teacher_result,
                "prune": spec.study.prune_checkpoints,
            }
        )
    return jobs


def matched_budgets(opd_results: list[dict]) -> dict[int, int]:
    """OPD budget -> mean tokens its main arms actually used (the baseline trains at these)."""
    by_budget: dict[int, list[int]] = {}
    for r in opd_results:
        if r["group"] == "main":
            by_budget.setdefault(r["budget"], []).append(r["training_tokens"])
    return {b: round(statistics.fmean(t)) for b, t in by_budget.items()}


def _sweep_jobs(spec: StudyFile, out: Path, main_results: list[dict], teacher_accuracy: float) -> list[dict]:
    """One sweep per objective in ``sweep_objectives``: its main arm with the most tokens, first seed."""
    jobs = []
    first_seed = spec.study.seeds[0]
    largest_opd = max(spec.study.budgets)
    matched = matched_budgets(main_results)
    for objective in spec.study.sweep_objectives:
        budget = largest_opd if objective == "opd" else matched.get(largest_opd)
        chosen = [
            r for r in main_results if r["objective"] == objective and r["budget"] == budget and r["seed"] == first_seed
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


def _describe_sampler(sampler: dict) -> str:
    if sampler["remasking"] == "static":
        what = f"static remasking, {sampler['denoise_steps_per_block']} steps per block"
    else:
        what = f"dynamic remasking at threshold {sampler['threshold']:g}"
    temp = "greedy" if sampler["temperature"] == 0 else f"temperature {sampler['temperature']:g}"
    return f"B={sampler['block_size']}, {what}, {temp}, max {sampler['max_new_tokens']} new tokens"


def _reference_row(reference: dict) -> dict:
    """The untrained converted student as a table row (0 training tokens)."""
    u = reference["untrained"]
    return table_row(
        {
            "arm_id": "untrained",
            "group": "reference",
            "objective": "none",
            "variant": "untrained",
            "budget": 0,
            "seed": None,
            "rollout_steps": 0,
            "training_tokens": 0,
            **u,
            "teacher_accuracy": reference["teacher_result"]["accuracy"],
            "description": "converted teacher, no training",
        }
    )


def run_study(
    spec: StudyFile,
    out_dir: str | Path,
    *,
    teacher: str | None = None,
    command: str = "",
    tracking_uri: str | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) the study in ``out_dir``; returns the content of ``results.json``."""
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        return _run_study(spec, out, teacher=teacher, command=command, tracking_uri=tracking_uri, progress=progress)


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold an exclusive lock on ``out`` for the whole study.

    Two studies in one folder would train the same arm into the same directory at once (measured:
    the second run then reused an arm folder the first had half-written).
    """
    import fcntl

    with open(out / LOCK_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OpdlmError(
                f"another study is running in {out} (it holds {out / LOCK_NAME}); wait for it or pass --out DIR"
            ) from None
        yield


def _run_study(spec: StudyFile, out: Path, *, teacher, command, tracking_uri, progress) -> dict:
    from opdlm.study.plots import plot_accuracy_vs_tokens, plot_accuracy_vs_tokens_per_step
    from opdlm.study.tracking import log_study, tracking_uri_for

    start = time.perf_counter()
    study, recipe_json = spec.study, spec.recipe.model_dump(mode="json")
    teacher_dir = resolve_teacher(spec.recipe, teacher)
    atomic_write_text(
        out / "study.json",
        json.dumps(spec.model_dump(mode="json") | {"teacher_dir": str(teacher_dir)}, indent=1) + "\n",
    )

    reference = run_jobs(
        run_reference,
        [{"folder": str(out / "reference"), "teacher": str(teacher_dir), "recipe": recipe_json}],
        1,
        "reference",
        progress,
    )[0]
    teacher_result = reference["teacher_result"]
    teacher_acc = teacher_result["accuracy"]
    teacher_ref = {
        k: teacher_result[k] for k in ("benchmark", "model", "accuracy")
    }  # no timings: arm fingerprints stay stable
    planner = Planner(teacher_dir, study.opd_fill_estimate)
    opd_jobs = _arm_jobs(opd_arms(study), spec, planner, out, teacher_dir, teacher_ref)
    opd_results = run_jobs(run_arm, opd_jobs, study.workers, "OPD arms", progress)
    base_jobs = _arm_jobs(
        baseline_arms(study, matched_budgets(opd_results)), spec, planner, out, teacher_dir, teacher_ref
    )
    base_results = run_jobs(run_arm, base_jobs, study.workers, "baseline arms", progress)
    arm_results = opd_results + base_results
    main_results = [r for r in arm_results if r["group"] == "main"]
    sweep_jobs = _sweep_jobs(spec, out, main_results, teacher_acc)
    sweep_rows = [
        row for res in run_jobs(run_sweep, sweep_jobs, study.workers, "sweeps", progress) for row in res["rows"]
    ]

    arm_rows = [table_row(r) for r in arm_results]
    summary = summarize(
        arm_rows, teacher_acc, reference["untrained"]["accuracy"], study.target_retention, study.target_token_ratio
    )
    meta = {
        "command": command,
        "teacher": str(teacher_dir),
        "n_eval": teacher_result["n"],
        "token_unit": TOKEN_UNIT,
        "eval_sampler": _describe_sampler(reference["untrained"]["eval_sampler"]),
        "workers": study.workers,
        "cpu_count": os.cpu_count(),
        "wall_seconds": None,
        "study": study.model_dump(mode="json"),
        "recipe": recipe_json,
    }
    results = {
        "rows": [_reference_row(reference), *arm_rows],
        "sweep": sweep_rows,
        "summary": summary,
        "meta": meta,
        "teacher_result": teacher_result,
    }
    plots = out / "plots"
    plot_accuracy_vs_tokens(
        arm_rows, teacher_acc, reference["untrained"]["accuracy"], study.target_retention, plots / PLOT_TOKENS
    )
    if sweep_rows:
        plot_accuracy_vs_tokens_per_step(sweep_rows, teacher_acc, study.target_retention, plots / PLOT_PARALLEL)
    meta["wall_seconds"] = round(time.perf_counter() - start, 1)
    _write_outputs(out, results)
    artifacts = [out / RESULTS_JSON, out / RESULTS_MD, *sorted(plots.glob("*.png"))]
    uri = tracking_uri_for(out, tracking_uri)
    run_id = log_study(out, study.experiment, results, arm_results, artifacts, uri)
    results["mlflow"] = {"tracking_uri": uri, "experiment": study.experiment, "run_id": run_id}
    _write_outputs(out, results)
    return results


def _write_outputs(out: Path, results: dict) -> None:
    atomic_write_text(out / RESULTS_JSON, json.dumps(results, indent=1, default=str) + "\n")
    atomic_write_text(
        out / RESULTS_MD, markdown(results["rows"], results["sweep"], results["summary"], results["meta"])
    )
