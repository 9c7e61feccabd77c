"""Task ``evaluate``: teacher and student on the recipe's benchmarks, then the student's parallelism sweep.

Teacher and student results are cached separately (the teacher's by its fingerprint, so a new
student is compared against the same teacher numbers without decoding the teacher again).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.fsutil import atomic_write_text
from opdlm.numbers import show_fraction, show_rate
from opdlm.pipeline.keys import eval_key
from opdlm.pipeline.plots import draw_sweep_plots
from opdlm.pipeline.stages import eval_metrics, eval_model_stage, lm_eval_metrics, sweep_stage
from opdlm.pipeline.training_metrics import KEY_SECTION
from tasks import tracking
from tasks.caching import content_cache_key, run_cached
from tasks.context import PipelineRun

RESULTS_FILE = "results.json"
SWEEP_FILE = "sweep.json"


def _metric_name(bench: str, key: str) -> str:
    """MLflow name of an evaluation number: the student's accuracy joins the key curves (sections split at "/")."""
    return f"{KEY_SECTION}/{bench}_{key}" if key == "student_accuracy" else f"{bench}/{key}"


def _eval_output(run: PipelineRun, model_key: str, what: str) -> tuple[str, Path]:
    key = eval_key(model_key, run.recipe(), what)
    marker = RESULTS_FILE if what != "sweep" else "sweep_done.json"
    return key, run.store(f"eval-{what}", key) / marker


@task(
    name="eval-model",
    cache_key_fn=content_cache_key("eval", lambda run, p: _eval_output(run, p["model_key"], p["what"])[0]),
    persist_result=True,
)
def eval_model(
    run_file: str, what: str, model_dir: str, model_key: str, teacher_results_file: str | None = None
) -> str:
    """Score ``model_dir`` (``what``: teacher or student) on every benchmark; returns the results file."""
    run = PipelineRun.load(run_file)
    _, results_file = _eval_output(run, model_key, what)
    if not results_file.is_file():
        teacher = json.loads(Path(teacher_results_file).read_text()) if teacher_results_file else None
        eval_model_stage(run.recipe(), model_dir, results_file.parent, teacher)  # writes results.json last
    return str(results_file)


@task(
    name="eval-sweep",
    cache_key_fn=content_cache_key("sweep", lambda run, p: _eval_output(run, p["model_key"], "sweep")[0]),
    persist_result=True,
)
def eval_sweep(run_file: str, model_dir: str, model_key: str) -> str:
    """Threshold x block-size sweep of the student with its Pareto plot; returns the sweep folder."""
    run = PipelineRun.load(run_file)
    _, marker = _eval_output(run, model_key, "sweep")
    if not marker.is_file():
        tables = sweep_stage(run.recipe(), model_dir, marker.parent, overwrite=True)  # the store's folder
        atomic_write_text(marker, json.dumps(tables, indent=2) + "\n")  # last: marks the sweep complete
    return str(marker.parent)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(run_file: str, teacher_record: dict, train_record: dict) -> dict:
    """Stage 5: teacher and student scores, retention and the sweep, as a nested MLflow run.

    Returns:
        ``{"metrics": {benchmark: {...}}, "student_results", "teacher_results", "sweep_dir", "eval_dir"}``.
    """
    logger = get_run_logger()
    run = PipelineRun.load(run_file)
    client = tracking.client_for(run.tracking_uri)
    student_dir = train_record["checkpoint"]
    with tracking.stage_run(client, run.experiment_id, run.parent_run_id, "eval", run.tags()) as run_id:
        tracking.log_params(client, run_id, run.recipe().eval.model_dump(mode="json"))
        student_key = f"{train_record['key']}-{train_record['rollout_step']}"
        teacher_file, t_cached = run_cached(
            eval_model, run_file, "teacher", teacher_record["path"], teacher_record["fingerprint"], output=lambda r: r
        )
        student_file, s_cached = run_cached(
            eval_model, run_file, "student", student_dir, student_key, teacher_file, output=lambda r: r
        )
        sweep_dir, w_cached = run_cached(
            eval_sweep, run_file, student_dir, student_key, output=lambda r: Path(r) / "sweep_done.json"
        )
        teacher_results = json.loads(Path(teacher_file).read_text())
        student_results = json.loads(Path(student_file).read_text())
        metrics = eval_metrics(student_results, teacher_results)
        flat = {_metric_name(bench, k): v for bench, m in metrics.items() for k, v in m.items() if v is not None}
        flat.update(lm_eval_metrics(Path(teacher_file).parent, Path(student_file).parent))  # eval.lm_eval_tasks
        for target in (run_id, run.parent_run_id):
            tracking.log_metrics(client, target, flat)
        sweep_tables = json.loads((Path(sweep_dir) / "sweep_done.json").read_text())
        for bench, table in sweep_tables.items():
            tracking.log_metric_steps(
                client,
                run_id,
                [
                    (
                        i,
                        {
                            f"sweep/{bench}/accuracy": p["accuracy"],
                            f"sweep/{bench}/tokens_per_step": p["tokens_per_step"],
                            f"sweep/{bench}/threshold": p["threshold"],
                            f"sweep/{bench}/block_size": p["block_size"],
                        },
                    )
                    for i, p in enumerate(table)
                ],
            )
        # the Pareto plots get the teacher and the shipped operating point (before they are logged), and join
        # the run folder's plots/ beside the training curves
        plots = draw_sweep_plots(
            run.recipe(), sweep_dir, student_results, teacher_results, Path(run.run_dir) / tracking.PLOTS_DIR
        )
        for folder, name in (
            (Path(teacher_file).parent, "teacher"),
            (Path(student_file).parent, "student"),
            (Path(sweep_dir), "sweep"),
        ):
            with tracking.artifact_upload(f"the {name} evaluation"):
                client.log_artifacts(run_id, str(folder), artifact_path=f"eval/{name}")
        # the pipeline run shows the Pareto plots beside the training curves
        tracking.log_artifacts(client, run.parent_run_id, plots, artifact_path=tracking.PLOTS_DIR)
        tracking.set_tags(client, run_id, {"cached": f"teacher={t_cached} student={s_cached} sweep={w_cached}"})
        for bench, m in metrics.items():
            logger.info(
                "eval %s: student %s, teacher %s, retention %s, %s tokens/step; agreement with the teacher %s, "
                "teacher NLL ratio %s",
                bench,
                show_fraction(m["student_accuracy"]),
                show_fraction(m["teacher_accuracy"]),
                show_fraction(m["retention"]),
                show_rate(m["student_tokens_per_step"]),
                show_fraction(m.get("student_agreement")),
                show_rate(m.get("student_nll_ratio")),
            )
    return {
        "metrics": metrics,
        "student_results": student_file,
        "teacher_results": teacher_file,
        "sweep_dir": sweep_dir,
    }
