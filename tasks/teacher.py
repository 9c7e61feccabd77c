"""Task ``teacher``: a local directory holding the recipe's teacher (bootstrapped, downloaded or local)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.pipeline.fingerprint import model_dir_fingerprint
from opdlm.pipeline.keys import teacher_key
from opdlm.pipeline.stages import teacher_stage
from opdlm.sources.builtin import BUILTIN_TEACHER, bootstrap_command
from opdlm.sources.resolve import teacher_source
from tasks import tracking
from tasks.caching import content_cache_key, run_cached
from tasks.context import PipelineRun
from tasks.process import run_streaming
from tasks.retry import retry_transient

BOOTSTRAP_METRICS = "bootstrap_metrics.json"


def _output(run: PipelineRun) -> tuple[str | None, Path | None]:
    key = teacher_key(run.recipe())
    return key, (run.store("teacher", key) / "config.json") if key else None


@task(
    name="build-teacher",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_transient,
    cache_key_fn=content_cache_key("teacher", lambda run, params: _output(run)[0]),
    persist_result=True,
)
def build_teacher(run_file: str) -> dict:
    """Bootstrap ``builtin:tiny`` into the store with ``opdlm teacher bootstrap`` (reused by content key),
    or resolve any other source (downloaded to its cache when remote).

    Returns:
        ``{"source", "path", "fingerprint"}``.
    """
    run = PipelineRun.load(run_file)
    recipe = run.recipe()
    key, marker = _output(run)
    if marker is not None and marker.is_file():
        path = marker.parent
    elif key is not None:  # builtin:tiny: `opdlm teacher bootstrap`, a training job, in its own process
        path = marker.parent
        cmd = bootstrap_command(recipe, path)
        get_run_logger().info("bootstrapping the teacher:\n$ %s", " ".join(cmd))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        run_streaming(cmd, env, get_run_logger(), name="teacher bootstrap")
    else:
        path = teacher_stage(recipe)
    return {"source": teacher_source(recipe), "path": str(path), "fingerprint": model_dir_fingerprint(path)}


@task(name="teacher", cache_policy=NO_CACHE)
def teacher(run_file: str) -> dict:
    """Stage 2: the frozen teacher, tracked as a nested MLflow run (source, fingerprint, bootstrap metrics)."""
    logger = get_run_logger()
    run = PipelineRun.load(run_file)
    recipe = run.recipe()
    client = tracking.client_for(run.tracking_uri)
    with tracking.stage_run(client, run.experiment_id, run.parent_run_id, "teacher", run.tags()) as run_id:
        record, cached = run_cached(build_teacher, run_file, output=lambda r: Path(r["path"]) / "config.json")
        params = {"source": record["source"], "path": record["path"]}
        if record["source"] == BUILTIN_TEACHER:
            params["bootstrap"] = recipe.teacher.bootstrap.model_dump(mode="json")
        tracking.log_params(client, run_id, params)
        tracking.set_tags(client, run_id, {"teacher.fingerprint": record["fingerprint"], "cached": cached})
        metrics_file = Path(record["path"]) / BOOTSTRAP_METRICS
        if metrics_file.is_file():
            found = json.loads(metrics_file.read_text())
            tracking.log_metrics(
                client,
                run_id,
                {k: v for k, v in found.items() if isinstance(v, int | float) and not isinstance(v, bool)},
            )
            tracking.log_artifacts(client, run_id, [metrics_file])
        logger.info("teacher %s -> %s%s", record["source"], record["path"], " (cached)" if cached else "")
    return record
