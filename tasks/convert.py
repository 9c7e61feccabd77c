"""Task ``convert``: the teacher converted into the block-diffusion student that training starts from."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.pipeline.keys import convert_key
from opdlm.pipeline.stages import convert_stage
from tasks import tracking
from tasks.caching import content_cache_key, run_cached
from tasks.context import PipelineRun


def _output(run: PipelineRun, teacher_record: dict) -> tuple[str, Path]:
    key = convert_key(run.recipe(), teacher_record["fingerprint"])
    return key, run.store("convert", key) / "config.json"


@task(
    name="build-student",
    cache_key_fn=content_cache_key("convert", lambda run, p: _output(run, p["teacher_record"])[0]),
    persist_result=True,
)
def build_student(run_file: str, teacher_record: dict) -> dict:
    """Convert the teacher into the store (reused by content key). Returns ``{"path", "key"}``."""
    run = PipelineRun.load(run_file)
    key, marker = _output(run, teacher_record)
    if not marker.is_file():
        convert_stage(run.recipe(), teacher_record["path"], marker.parent, overwrite=True)  # the store's folder
    return {"path": str(marker.parent), "key": key}


@task(name="convert", cache_policy=NO_CACHE)
def convert(run_file: str, teacher_record: dict) -> dict:
    """Stage 3: conversion, tracked as a nested MLflow run (block size, logit shift, sampler defaults)."""
    logger = get_run_logger()
    run = PipelineRun.load(run_file)
    recipe = run.recipe()
    client = tracking.client_for(run.tracking_uri)
    with tracking.stage_run(client, run.experiment_id, run.parent_run_id, "convert", run.tags()) as run_id:
        record, cached = run_cached(
            build_student, run_file, teacher_record, output=lambda r: Path(r["path"]) / "config.json"
        )
        tracking.log_params(
            client,
            run_id,
            {
                "convert": recipe.convert.model_dump(mode="json"),
                "sampler": recipe.sampler.model_dump(mode="json"),
                "path": record["path"],
            },
        )
        tracking.set_tags(client, run_id, {"student.key": record["key"], "cached": cached})
        logger.info("converted student -> %s%s", record["path"], " (cached)" if cached else "")
    return record
