"""Task ``train-<stage>``: one curriculum stage of OPD training, run as a subprocess.

Training runs in its own process (a task timeout cannot interrupt in-process training, and
``torchrun``/``deepspeed`` start multi-GPU jobs the same way); the command and environment come from
:mod:`opdlm.train.launch`. Every stage of a run trains into the same content-addressed folder, so a
retried or restarted stage resumes from that folder's newest checkpoint. While the process runs, new
lines of its ``metrics.jsonl`` are forwarded to the stage's MLflow run (and the parent's) with their
global rollout step.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.errors import OpdlmError
from opdlm.pipeline.keys import train_key
from opdlm.pipeline.plots import write_training_curves
from opdlm.pipeline.stages import stage_steps, training_progress
from opdlm.pipeline.training_metrics import read_metric_steps, stage_constants, tracked_metrics
from opdlm.train.checkpoint import list_checkpoints
from opdlm.train.launch import training_command, training_env
from tasks import tracking
from tasks.caching import content_cache_key, run_cached
from tasks.context import PipelineRun
from tasks.process import run_streaming
from tasks.retry import retry_transient

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"


def train_dir_of(run: PipelineRun, teacher_record: dict, student_record: dict, data_record: dict) -> Path:
    """The content-addressed training folder shared by all stages of this training run."""
    key = train_key(run.recipe(), student_record["key"], data_record["md5"], teacher_record["fingerprint"])
    return run.store("train", key)


def _stage_key(run: PipelineRun, params: dict) -> str:
    train_dir = train_dir_of(run, params["teacher_record"], params["student_record"], params["data_record"])
    return f"{train_dir.name}-{params['stage']}"


def _stage_checkpoint(train_dir: Path, end: int) -> Path:
    """The checkpoint at the stage's end (or, if rotation removed it, the newest one after it)."""
    found = [p for p in list_checkpoints(train_dir / "checkpoints") if int(p.name.split("-")[1]) >= end]
    if not found:
        raise OpdlmError(f"training folder {train_dir} has no checkpoint at or after rollout step {end}")
    return found[0]


@task(name="train-stage-process", cache_key_fn=content_cache_key("train", _stage_key), persist_result=True)
def run_training_stage(
    run_file: str, stage: str, teacher_record: dict, student_record: dict, data_record: dict, mlflow_run_ids: list[str]
) -> dict:
    """Train until the end of ``stage`` (resuming the folder's newest checkpoint); returns the stage record.

    ``mlflow_run_ids`` receive the metrics live; they are not part of the cache key.
    """
    logger = get_run_logger()
    run = PipelineRun.load(run_file)
    recipe = run.recipe()
    train_dir = train_dir_of(run, teacher_record, student_record, data_record)
    start, end = stage_steps(recipe, stage)
    streamed: set[int] = set()
    resumed_at = training_progress(train_dir)
    if resumed_at < end:
        cmd = training_command(
            run.recipe_file,
            train_dir,
            resources=recipe.resources,
            teacher=teacher_record["path"],
            student=student_record["path"],
            data=data_record["path"],
            until_stage=stage,
            deepspeed_config=recipe.train.deepspeed,
        )
        env = training_env(
            os.environ,
            mlflow_run_id=mlflow_run_ids[0] if mlflow_run_ids else None,
            resources=recipe.resources,
            parent_run_id=run.parent_run_id,
        )
        client = tracking.client_for(run.tracking_uri)

        def forward(steps):
            tracked = [(step, tracked_metrics(m)) for step, m in steps]
            for run_id in mlflow_run_ids:
                tracking.log_metric_steps(client, run_id, tracked)

        logger.info("train %s: steps %d..%d in %s\n$ %s", stage, start, end - 1, train_dir, " ".join(cmd))
        streamed = run_streaming(
            cmd,
            env,
            logger,
            name=f"training stage {stage!r}",
            metrics_path=train_dir / METRICS_FILE,
            steps=range(start, end),
            forward=forward,
        )
    checkpoint = _stage_checkpoint(train_dir, end)
    return {
        "stage": stage,
        "train_dir": str(train_dir),
        "checkpoint": str(checkpoint),
        "rollout_step": end,
        "start_step": start,
        "resumed_at": resumed_at,
        "streamed_steps": sorted(streamed),
        "key": train_dir.name.removeprefix("train-"),
    }


@task(
    name="train-stage",
    task_run_name="train-{stage}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
)
def train_stage(
    run_file: str,
    stage: str,
    teacher_record: dict,
    student_record: dict,
    data_record: dict,
    checkpoint_in: str | None = None,
) -> dict:
    """Stage 4 (one task per curriculum stage): checkpoint in, checkpoint out, as a nested MLflow run.

    Args:
        checkpoint_in: the previous stage's checkpoint (None for the first stage, which starts from
            the converted student); training resumes from it.

    Returns:
        The stage record: ``train_dir``, ``checkpoint`` (out), ``rollout_step``, ``key``.
    """
    logger = get_run_logger()
    run = PipelineRun.load(run_file)
    recipe = run.recipe()
    client = tracking.client_for(run.tracking_uri)
    stage_cfg = next(s for s in recipe.train.stages if s.name == stage)
    with tracking.stage_run(client, run.experiment_id, run.parent_run_id, f"train-{stage}", run.tags()) as run_id:
        tracking.log_params(
            client, run_id, {"stage": stage_cfg.model_dump(mode="json"), "checkpoint_in": checkpoint_in}
        )
        record, cached = run_cached(
            run_training_stage,
            run_file,
            stage,
            teacher_record,
            student_record,
            data_record,
            [run_id, run.parent_run_id],
            output=lambda r: r["checkpoint"],
        )
        start, end = record["start_step"], record["rollout_step"]
        streamed = set() if cached else set(record["streamed_steps"])
        train_dir = Path(record["train_dir"])
        lines = [(s, m) for s, m in read_metric_steps(train_dir / METRICS_FILE) if start <= s < end]
        missing = [(s, tracked_metrics(m)) for s, m in lines if s not in streamed]
        for target in (run_id, run.parent_run_id):
            tracking.log_metric_steps(client, target, missing)
        tracking.log_params(client, run_id, {"measured": stage_constants(lines)})  # settings, not curves
        tracking.set_tags(
            client, run_id, {"checkpoint_out": record["checkpoint"], "train_dir": str(train_dir), "cached": cached}
        )
        csv_path, png_path = write_training_curves(train_dir / METRICS_FILE, Path(run.run_dir) / "plots")
        tracking.log_artifacts(
            client, run_id, [train_dir / SUMMARY_FILE, train_dir / "params.json", csv_path, png_path]
        )
        tracking.log_artifacts(
            client, run.parent_run_id, [csv_path, png_path], artifact_path=tracking.PLOTS_DIR
        )  # the curves so far
        logger.info("train %s: checkpoint %s%s", stage, record["checkpoint"], " (cached)" if cached else "")
    return record
