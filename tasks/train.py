"""Task ``train-<stage>``: one curriculum stage of OPD training, run as a subprocess.

Training runs in its own process (a task timeout cannot interrupt in-process training, and
``torchrun``/``deepspeed`` start multi-GPU jobs the same way); the command and environment come from
:mod:`opdlm.train.launch`. Every stage of a run trains into the same content-addressed folder
(:class:`~opdlm.train.folder.TrainingFolder`), so a retried or restarted stage resumes from that
folder's newest checkpoint. The trainer's rank 0 writes ``metrics.jsonl``; a
:class:`~opdlm.pipeline.training_metrics.MetricReplay` puts its lines into the stage's MLflow run
(and the parent's) with their global rollout step while the process runs, and whatever is left once
the stage ends (a cached stage, the last lines), each step once.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.pipeline.keys import train_key
from opdlm.pipeline.plots import write_training_curves
from opdlm.pipeline.stages import stage_steps
from opdlm.pipeline.training_metrics import read_metric_steps, stage_constants
from opdlm.train.folder import TrainingFolder
from opdlm.train.launch import training_command, training_env
from tasks import tracking
from tasks.caching import content_cache_key, run_cached
from tasks.context import PipelineRun
from tasks.process import run_streaming
from tasks.retry import retry_transient


def train_dir_of(run: PipelineRun, teacher_record: dict, student_record: dict, data_record: dict) -> Path:
    """The content-addressed training folder shared by all stages of this training run."""
    key = train_key(run.recipe(), student_record["key"], data_record["md5"], teacher_record["fingerprint"])
    return run.store("train", key)


def _stage_key(run: PipelineRun, params: dict) -> str:
    train_dir = train_dir_of(run, params["teacher_record"], params["student_record"], params["data_record"])
    return f"{train_dir.name}-{params['stage']}"


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
    folder = TrainingFolder(train_dir)
    start, end = stage_steps(recipe, stage)
    resumed_at = folder.progress()
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
        env = training_env(os.environ, resources=recipe.resources)
        replay = tracking.MetricReplay(
            tracking.client_for(run.tracking_uri), mlflow_run_ids, folder.metrics_file, range(start, end)
        )
        logger.info("train %s: steps %d..%d in %s\n$ %s", stage, start, end - 1, train_dir, " ".join(cmd))
        run_streaming(cmd, env, logger, name=f"training stage {stage!r}", on_poll=replay)
    checkpoint = folder.checkpoint_at_or_after(end)
    return {
        "stage": stage,
        "train_dir": str(train_dir),
        "checkpoint": str(checkpoint),
        "rollout_step": end,
        "start_step": start,
        "resumed_at": resumed_at,
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
    """Stage 4 (one task per curriculum stage): train to the stage's end, checkpoint out, as a nested MLflow run.

    Training continues from the training folder's newest checkpoint (every stage of a run trains
    into the same content-addressed folder), which is ``checkpoint_in`` or, when this stage already
    ran (a retry, a cache hit), a later one.

    Args:
        checkpoint_in: the previous stage's checkpoint out (None for the first stage, which starts from
            the converted student), logged as this stage's lineage parameter.

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
        folder = TrainingFolder(record["train_dir"])
        # whatever the live replay did not log (a cached stage: all of it), each step once per run
        tracking.MetricReplay(client, [run_id, run.parent_run_id], folder.metrics_file, range(start, end))()
        lines = [(s, m) for s, m in read_metric_steps(folder.metrics_file) if start <= s < end]
        tracking.log_params(client, run_id, {"measured": stage_constants(lines)})  # settings, not curves
        tracking.set_tags(
            client, run_id, {"checkpoint_out": record["checkpoint"], "train_dir": str(folder.path), "cached": cached}
        )
        csv_path, png_path = write_training_curves(folder.metrics_file, Path(run.run_dir) / "plots")
        tracking.log_artifacts(client, run_id, [folder.summary_file, folder.params_file, csv_path, png_path])
        tracking.log_artifacts(
            client, run.parent_run_id, [csv_path, png_path], artifact_path=tracking.PLOTS_DIR
        )  # the curves so far
        logger.info("train %s: checkpoint %s%s", stage, record["checkpoint"], " (cached)" if cached else "")
    return record
