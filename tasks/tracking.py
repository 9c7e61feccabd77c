"""MLflow tracking for the pipeline: one parent run per pipeline run, one nested run per stage.

Everything goes through an explicit :class:`mlflow.MlflowClient` and run ids (no fluent "active
run"), so tasks in worker threads or retried on another worker log to the right run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag

from opdlm.pipeline.params import flatten

# the one metrics logger and the metrics.jsonl replay, shared with `opdlm track`
from opdlm.pipeline.training_metrics import MetricReplay, log_metric_steps  # noqa: F401

PARENT_TAG = "mlflow.parentRunId"
FLOW_RUN_TAG = "prefect.flow_run_id"
STAGE_TAG = "opdlm.stage"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
PARAMS_PER_BATCH = 100
NOTE_TAG = "mlflow.note.content"  # shown as a run's Description in the UI
PLOTS_DIR = "plots"  # the pipeline run's folder of figures (training curves, sweep Pareto fronts)
# MLflow 3.17's UI takes its workflow (GenAI or model training) from this query parameter, falling
# back to the browser's last choice and then GenAI (the experiment tag mlflow.experimentKind is not
# read by that build); links we print carry it so they open the model-training view.
UI_WORKFLOW_QUERY = "workflowType=machine_learning"


def client_for(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri`` (also made the process default, which the model-logging API reads)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created with ``artifact_location`` (None: the tracking server's
    default) when it does not exist."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def start_run(
    client: MlflowClient, experiment_id: str, name: str, parent_run_id: str | None = None, tags: dict | None = None
) -> str:
    """Create a run (nested under ``parent_run_id`` when given); returns its id."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
    return run.info.run_id


def ui_url(base: str, route: str) -> str:
    """The MLflow UI address of ``route`` (``experiments/1/runs/<id>``), opening in model-training view."""
    return f"{base.rstrip('/')}/#/{route}?{UI_WORKFLOW_QUERY}"


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log flattened ``params`` in batches (values cut to MLflow's 6000-character limit)."""
    items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in flatten(params).items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH], synchronous=True)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log one step's metrics (None values skipped)."""
    log_metric_steps(client, run_id, [(step, metrics)])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


@contextlib.contextmanager
def artifact_upload(what: str) -> Iterator[None]:
    """Turn a failed upload to the artifact store into one :class:`~opdlm.storage.s3.StorageError` line
    (which the tasks' retry condition treats as transient)."""
    from opdlm.storage.s3 import StorageError

    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise StorageError(
            f"upload of {what} to the MLflow artifact store failed: {type(exc).__name__}: {first}"
        ) from exc


def log_artifacts(client: MlflowClient, run_id: str, paths: list[str | Path], artifact_path: str | None = None) -> None:
    """Upload files and whole folders (under their own name) to the run's artifact store; S3 directly
    when the experiment's artifact location is S3."""
    for p in map(Path, paths):
        with artifact_upload(str(p)):
            if p.is_dir():
                client.log_artifacts(
                    run_id, str(p), artifact_path=f"{artifact_path}/{p.name}" if artifact_path else p.name
                )
            elif p.is_file():
                client.log_artifact(run_id, str(p), artifact_path=artifact_path)


@contextlib.contextmanager
def stage_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, stage: str, tags: dict | None = None
) -> Iterator[str]:
    """A nested run for one stage: FINISHED when the block succeeds, FAILED (then re-raised) when it raises."""
    run_id = start_run(client, experiment_id, stage, parent_run_id, {STAGE_TAG: stage, **(tags or {})})
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def fail_open_runs(client: MlflowClient, flow_run_id: str) -> list[str]:
    """Mark every still-running MLflow run of Prefect flow run ``flow_run_id`` FAILED; returns their ids."""
    runs = client.search_runs(
        experiment_ids=[e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        client.set_terminated(run.info.run_id, status="FAILED")
    return [r.info.run_id for r in runs]
