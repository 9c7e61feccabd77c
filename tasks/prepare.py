"""Task ``prepare-run``: validate the recipe, open the run folder and the MLflow parent run."""

from __future__ import annotations

import shutil

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.config.recipe import load_recipe
from opdlm.fsutil import atomic_write_text
from opdlm.pipeline import layout
from tasks import tracking
from tasks.context import PipelineRun
from tasks.retry import retry_transient

RECIPE_FILE = "recipe.yaml"


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


@task(name="prepare-run", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def prepare_run(recipe: str, overrides: list[str]) -> str:
    """Validate ``recipe`` + ``overrides``, write the resolved recipe into a new run folder, start the
    MLflow parent run (params = the whole recipe, flattened). Returns the run file's path."""
    resolved = load_recipe(recipe, overrides)  # a bad recipe or override fails here, before any work
    runs = layout.runs_dir()
    run_dir = layout.new_run_dir(resolved.name, runs)
    try:
        return _open_run(recipe, overrides, resolved, runs, run_dir)
    except BaseException:
        # a retry opens a new folder: a failed attempt leaves none behind (it holds only the recipe)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _open_run(recipe: str, overrides: list[str], resolved, runs, run_dir) -> str:
    logger = get_run_logger()
    recipe_file = run_dir / RECIPE_FILE
    header = f"# {resolved.name}: resolved from {recipe} with overrides {list(overrides)}\n"
    atomic_write_text(recipe_file, header + yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))

    uri = layout.tracking_uri()
    client = tracking.client_for(uri)
    experiment_id = tracking.ensure_experiment(client, f"opdlm-{resolved.name}", layout.artifact_root())
    flow_run_id = _flow_run_id()
    code = layout.code_version()
    tags = {
        "opdlm.recipe": str(recipe),
        "opdlm.overrides": " ".join(overrides),
        "opdlm.code_version": code,
        "opdlm.run_dir": str(run_dir),
        "mlflow.source.git.commit": code.removesuffix("+dirty"),
    }
    if flow_run_id:
        tags[tracking.FLOW_RUN_TAG] = flow_run_id
    parent = tracking.start_run(client, experiment_id, run_dir.name, tags=tags)
    tracking.log_params(client, parent, resolved.model_dump(mode="json"))
    with tracking.artifact_upload(str(recipe_file)):
        client.log_artifact(parent, str(recipe_file))
    run = PipelineRun(
        runs_dir=str(runs),
        run_dir=str(run_dir),
        recipe_file=str(recipe_file),
        recipe_source=str(recipe),
        overrides=list(overrides),
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        code_version=code,
        flow_run_id=flow_run_id,
    )
    path = run.save()
    logger.info("run folder %s, MLflow run %s (%s)", run_dir, parent, uri)
    return path
