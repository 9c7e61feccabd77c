"""Tasks that make a Prefect flow run findable and readable in the Prefect UI.

``label-flow-run`` names the flow run after its recipe and run folder (``tiny-20261201-102530-ab12cd``,
the MLflow parent run's name without the recipe), tags it ``recipe:<name>`` and
``mlflow-run:<run id>``, and links the MLflow parent run as a link artifact. ``publish-scores``
shows the evaluation's headline numbers as a table artifact.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import tracking
from tasks.context import PipelineRun
from tasks.report import mlflow_ui

SCORE_COLUMNS = (
    "student_accuracy",
    "teacher_accuracy",
    "retention",
    "student_tokens_per_step",
    "teacher_tokens_per_step",
    "n",
)


def artifact_key(run: PipelineRun, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"opdlm-{run.recipe().name}-{what}".lower().replace("_", "-").replace(".", "-")


def mlflow_run_url(run: PipelineRun) -> str:
    """The MLflow UI page of the run's parent run (the same URL the run's summary prints)."""
    base, _ = mlflow_ui(run.tracking_uri)
    return tracking.ui_url(base, f"experiments/{run.experiment_id}/runs/{run.parent_run_id}")


def flow_run_labels(run: PipelineRun) -> tuple[str, list[str]]:
    """``(name, tags)`` of the flow run: named after the recipe and run folder, tagged with both ids."""
    name = run.recipe().name
    return f"{name}-{Path(run.run_dir).name}", [f"recipe:{name}", f"mlflow-run:{run.parent_run_id}"]


def recipe_run_name() -> str:
    """The flow run's name until ``label-flow-run`` completes it: the recipe's file stem (``tiny``)."""
    from prefect.runtime import flow_run

    return Path(str(flow_run.parameters.get("recipe") or "opdlm")).stem


@task(name="label-flow-run", cache_policy=NO_CACHE)
def label_flow_run(run_file: str) -> str:
    """Name and tag the flow run, link its MLflow run; returns the MLflow run URL."""
    from prefect.artifacts import create_link_artifact
    from prefect.client.orchestration import get_client

    run = PipelineRun.load(run_file)
    name, tags = flow_run_labels(run)
    if run.flow_run_id:
        with get_client(sync_client=True) as client:
            existing = client.read_flow_run(run.flow_run_id).tags  # a deployment's own tags stay
            client.update_flow_run(run.flow_run_id, name=name, tags=sorted({*existing, *tags}))
    url = mlflow_run_url(run)
    create_link_artifact(
        link=url,
        link_text=f"MLflow run {Path(run.run_dir).name}",
        key=artifact_key(run, "mlflow-run"),
        description="The MLflow parent run: params, metrics, curves, artifacts and stage runs.",
    )
    get_run_logger().info("flow run %s, tags %s; MLflow run %s", name, ", ".join(tags), url)
    return url


@task(name="publish-scores", cache_policy=NO_CACHE)
def publish_scores(run_file: str, eval_record: dict) -> list[dict]:
    """The evaluation's headline numbers per benchmark as a table artifact; returns the rows."""
    from prefect.artifacts import create_table_artifact

    run = PipelineRun.load(run_file)
    rows = [
        {"benchmark": bench, **{k: _round(m.get(k)) for k in SCORE_COLUMNS}}
        for bench, m in eval_record["metrics"].items()
    ]
    create_table_artifact(
        table=rows, key=artifact_key(run, "scores"), description=f"Student vs teacher, run {Path(run.run_dir).name}"
    )
    return rows


def _round(value):
    return round(value, 4) if isinstance(value, float) else value
