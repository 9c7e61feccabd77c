"""Tasks of the study flow (``flows/study.py``): the reference, one task per arm, one per sweep.

Each wraps a plain job of :mod:`tasks.study_jobs` (which calls the library: train, evaluate,
convert, sweep). The flow submits them to Prefect's process-pool task runner, one single-threaded
process per worker, so this module imports nothing heavy at module level (no torch, no MLflow):
each pool process pays only for what its job uses.

Jobs cache their own results (``result.json`` keyed by the job's hash), so the tasks use no
Prefect cache and no result storage; a resumed study skips finished jobs before submitting them.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import study_jobs

TASK_OPTIONS = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="study-reference", **TASK_OPTIONS)
def study_reference(job: dict) -> dict:
    """Score the teacher and the untrained converted student on the held-out rows."""
    result = study_jobs.run_reference(job)
    get_run_logger().info(
        "teacher %.3f, untrained student %.3f on %d rows",
        result["teacher_result"]["accuracy"],
        result["untrained"]["accuracy"],
        result["untrained"]["n_eval"],
    )
    return result


@task(name="study-arm", task_run_name="{job[arm][arm_id]}", **TASK_OPTIONS)
def study_arm(job: dict) -> dict:
    """Train one arm and score it against the teacher; returns its result row."""
    result = study_jobs.run_arm(job)
    get_run_logger().info(describe(result))
    return result


@task(name="study-completions", task_run_name="completions-{job[name]}", **TASK_OPTIONS)
def study_completions(job: dict) -> dict:
    """The teacher's greedy completions of one split's prompt pool (one seed), into the content-keyed cache."""
    result = study_jobs.run_completions(job)
    get_run_logger().info("teacher completions of %s: %d rows", job["name"], result["rows"])
    return result


@task(name="study-sweep", task_run_name="sweep-{job[meta][arm_id]}", **TASK_OPTIONS)
def study_sweep(job: dict) -> dict:
    """Decode one model under every (block size, threshold) of the sweep grid."""
    return study_jobs.run_sweep(job)


def describe(result: dict) -> str:
    """One line per finished arm: accuracy, tokens, FLOPs, steps, time."""
    flops = f", {result['flops']:.3g} FLOPs" if result.get("flops") is not None else ""
    return (
        f"{result['arm_id']}: accuracy {result['accuracy']:.3f} with {result['training_tokens']:,} tokens{flops} "
        f"in {result['rollout_steps']} steps ({result['train_seconds']:.0f} s)"
    )
