"""Tasks that open and close a study in the flow's own process: the teacher, the study's run file and
MLflow parent run, and at the end the table, plots, MLflow artifacts and Prefect artifacts.

A study is described to the pipeline's shared code as a :class:`~tasks.context.PipelineRun` whose
run folder is the study folder and whose recipe is the study's base recipe, so the flow run is named,
tagged and linked to its MLflow run by the pipeline's own ``label-flow-run`` task
(:mod:`tasks.flow_run`), and its artifacts carry the same keys (``opdlm-study-...``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.config.recipe import Recipe
from opdlm.fsutil import atomic_write_text
from opdlm.pipeline import layout
from opdlm.study import plan
from opdlm.study.config import StudyFile
from opdlm.study.heldout import markdown_heldout, summarize_heldout
from opdlm.study.table import describe_sampler, markdown, reference_row, summarize, table_row
from tasks import study_tracking, tracking
from tasks.context import RUN_FILE, PipelineRun
from tasks.flow_run import artifact_key

RECIPE_FILE = "recipe.yaml"


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


@task(name="study-teacher", cache_policy=NO_CACHE)
def study_teacher(recipe: dict, teacher: str | None) -> str:
    """The teacher directory (``teacher``, else the recipe's path or source; builtin sources are bootstrapped)."""
    path = plan.resolve_teacher(Recipe.model_validate(recipe), teacher)
    get_run_logger().info("teacher %s", path)
    return str(path)


@task(name="open-study", cache_policy=NO_CACHE)
def open_study(
    spec_json: dict, out: str, teacher_dir: str, recipe_source: str, overrides: list[str], command: str, uri: str
) -> str:
    """Write ``study.json`` and the base recipe, open the MLflow parent run; returns the run file's path."""
    spec = StudyFile.model_validate(spec_json)
    out_dir = Path(out)
    atomic_write_text(
        out_dir / plan.STUDY_JSON,
        json.dumps(spec.model_dump(mode="json") | {"teacher_dir": teacher_dir}, indent=1) + "\n",
    )
    recipe_file = out_dir / RECIPE_FILE
    header = (
        f"# {spec.recipe.name}: the recipe every arm of the study starts from ({recipe_source} {' '.join(overrides)})\n"
    )
    atomic_write_text(recipe_file, header + yaml.safe_dump(spec.recipe.model_dump(mode="json"), sort_keys=False))
    flow_run_id, code = _flow_run_id(), layout.code_version()
    tags = {
        "opdlm.recipe": recipe_source,
        "opdlm.overrides": " ".join(overrides),
        "opdlm.code_version": code,
        "opdlm.run_dir": str(out_dir),
        "mlflow.source.git.commit": code.removesuffix("+dirty"),
    }
    if flow_run_id:
        tags[tracking.FLOW_RUN_TAG] = flow_run_id
    params = {"command": command, "teacher": teacher_dir, "study": spec.study.model_dump(mode="json")}
    experiment_id, parent = study_tracking.open_study_run(
        uri, spec.study.experiment, out_dir, params | {"recipe": spec.recipe.model_dump(mode="json")}, tags
    )
    run = PipelineRun(
        runs_dir=str(out_dir),
        run_dir=str(out_dir),
        recipe_file=str(recipe_file),
        recipe_source=recipe_source,
        overrides=list(overrides),
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        code_version=code,
        flow_run_id=flow_run_id,
    )
    get_run_logger().info("study folder %s, MLflow run %s (%s)", out_dir, parent, uri)
    return run.save()


def run_file_of(out_dir: str | Path) -> Path:
    return Path(out_dir) / RUN_FILE


def _write_outputs(out: Path, results: dict) -> None:
    atomic_write_text(out / plan.RESULTS_JSON, json.dumps(results, indent=1, default=str) + "\n")
    text = markdown(results["rows"], results["sweep"], results["summary"], results["meta"])
    if results.get("heldout"):
        text += "\n".join(markdown_heldout(results["heldout"])) + "\n"
    atomic_write_text(out / plan.RESULTS_MD, text)


def _note(summary: dict) -> str:
    """The MLflow run's description: the headline sentences."""
    lines = [summary.get("statement") or ""]
    if summary.get("heldout_statement"):
        lines.append(f"Held-out skills: {summary['heldout_statement']}")
    if summary.get("flops_statement"):
        lines.append(summary["flops_statement"])
    if summary.get("best_ablation_at_flops"):
        lines.append(f"Best ablation at matched FLOPs: {summary['best_ablation_at_flops']}.")
    return "\n\n".join(line for line in lines if line)


@task(name="finish-study", cache_policy=NO_CACHE)
def finish_study(
    run_file: str,
    spec_json: dict,
    reference: dict,
    arm_results: list[dict],
    sweep_rows: list[dict],
    meta: dict,
    heldout_results: list[dict] | None = None,
) -> dict:
    """The table, plots, ``results.json``/``results.md``; MLflow artifacts and headline; Prefect artifacts.

    ``heldout_results``: the held-out-skill section's arm results (its own table, plot and ``heldout`` key).

    Returns the content of ``results.json`` (with the MLflow run's coordinates under ``mlflow``).
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from opdlm.study.plots import (
        plot_accuracy_vs_flops,
        plot_accuracy_vs_tokens,
        plot_accuracy_vs_tokens_per_step,
        plot_heldout_retention,
    )

    run, spec = PipelineRun.load(run_file), StudyFile.model_validate(spec_json)
    out, study = Path(run.run_dir), spec.study
    teacher_result = reference["teacher_result"]
    teacher_acc, untrained = teacher_result["accuracy"], reference["untrained"]["accuracy"]
    arm_rows = [table_row(r) for r in arm_results]
    summary = summarize(arm_rows, teacher_acc, untrained, study.target_retention, study.target_token_ratio)
    meta = {
        **meta,
        "n_eval": teacher_result["n"],
        "token_unit": plan.TOKEN_UNIT,
        "flops_unit": plan.FLOPS_UNIT,
        "eval_sampler": describe_sampler(reference["untrained"]["eval_sampler"]),
        "workers": study.workers,
        "cpu_count": os.cpu_count(),
        "study": study.model_dump(mode="json"),
        "recipe": spec.recipe.model_dump(mode="json"),
    }
    results = {
        "rows": [reference_row(reference), *arm_rows],
        "sweep": sweep_rows,
        "summary": summary,
        "meta": meta,
        "teacher_result": teacher_result,
    }
    plots = out / "plots"
    if heldout_results:
        results["heldout"] = summarize_heldout(heldout_results, teacher_result["per_skill"])
        summary["heldout_statement"] = results["heldout"]["statement"]
        plot_heldout_retention(results["heldout"], plots / plan.PLOT_HELDOUT)
    if arm_rows:
        plot_accuracy_vs_tokens(arm_rows, teacher_acc, untrained, study.target_retention, plots / plan.PLOT_TOKENS)
    if any(r.get("flops") is not None for r in arm_rows):
        plot_accuracy_vs_flops(arm_rows, teacher_acc, untrained, study.target_retention, plots / plan.PLOT_FLOPS)
    if sweep_rows:
        plot_accuracy_vs_tokens_per_step(sweep_rows, teacher_acc, study.target_retention, plots / plan.PLOT_PARALLEL)
    meta["wall_seconds"] = round(time.time() - meta.pop("started_at"), 1)
    results["mlflow"] = {"tracking_uri": run.tracking_uri, "experiment": study.experiment, "run_id": run.parent_run_id}
    _write_outputs(out, results)
    artifacts = [out / plan.RESULTS_JSON, out / plan.RESULTS_MD, *sorted(plots.glob("*.png"))]
    study_tracking.close_study_run(run.tracking_uri, run.parent_run_id, results, artifacts, _note(summary))
    create_markdown_artifact(
        markdown=(out / plan.RESULTS_MD).read_text(),
        key=artifact_key(run, "results"),
        description=f"The study's table, {out}",
    )
    create_table_artifact(
        table=[
            {
                "opd_tokens": r["opd_tokens"],
                "opd_accuracy": round(r["opd_accuracy"], 4),
                "baseline_tokens_to_match": r["baseline_tokens"],
                "token_ratio": None if r["ratio"] is None else round(r["ratio"], 3),
            }
            for r in summary.get("token_ratio_by_budget") or []
        ],
        key=artifact_key(run, "token-ratio"),
        description="Baseline tokens needed to match OPD's accuracy, per OPD budget",
    )
    get_run_logger().info("study -> %s", out / plan.RESULTS_MD)
    return results
