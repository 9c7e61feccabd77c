"""Task ``summarise``: the run's Markdown summary as a Prefect artifact and in MLflow; closes the parent run.

Also :func:`close_failed_runs`, the flow's failure hook: every MLflow run of a failed flow run is
marked FAILED, so a failed pipeline never leaves a run looking alive (and never registered anything).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from opdlm.fsutil import atomic_write_text
from opdlm.numbers import show_count, show_fraction, show_rate
from opdlm.pipeline.serving import alias_note, serve_command, serving_alias
from opdlm.train.folder import TrainingFolder
from tasks import tracking
from tasks.context import PipelineRun

SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"
LOCAL_PREFECT_UI = "http://127.0.0.1:4200"


def _tool(name: str) -> str:
    """``name`` as it can be run: from this interpreter's environment when it is there (a venv not on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def mlflow_ui(tracking_uri: str) -> tuple[str, str | None]:
    """``(base URL of the MLflow UI, command that starts it)``; the command is None for a server URI."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), None
    return LOCAL_MLFLOW_UI, f"{_tool('mlflow')} ui --backend-store-uri {tracking_uri} --port 5000"


def prefect_ui() -> tuple[str, str | None]:
    """``(base URL of the Prefect UI, command that starts it)``; ephemeral runs live in the local database
    that ``prefect server start`` serves."""
    api = os.environ.get("PREFECT_API_URL")
    ui = os.environ.get("PREFECT_UI_URL") or (api.rstrip("/").removesuffix("/api") if api else None)
    if ui:
        return ui, None
    # analytics off: offline, its telemetry heartbeat logs an ERROR (and can race the fresh database)
    return LOCAL_PREFECT_UI, f"PREFECT_SERVER_ANALYTICS_ENABLED=false {_tool('prefect')} server start --host 127.0.0.1"


def render_summary(run: PipelineRun, eval_record: dict, train_records: list[dict], reg: dict) -> tuple[str, dict]:
    """The Markdown summary and the same facts as a dict."""
    mlflow_base, mlflow_cmd = mlflow_ui(run.tracking_uri)
    prefect_base, prefect_cmd = prefect_ui()
    runs_url = tracking.ui_url(mlflow_base, f"experiments/{run.experiment_id}/runs")
    run_url = tracking.ui_url(mlflow_base, f"experiments/{run.experiment_id}/runs/{run.parent_run_id}")
    model_url = tracking.ui_url(mlflow_base, f"models/{quote(reg['name'])}/versions/{reg['version']}")
    flow_url = f"{prefect_base}/runs/flow-run/{run.flow_run_id}" if run.flow_run_id else None
    train_dir = Path(train_records[-1]["train_dir"])
    train_summary = TrainingFolder(train_dir).summary()
    lines = [
        f"# opdlm run `{Path(run.run_dir).name}`",
        "",
        "| benchmark | student acc | teacher acc | retention | student tokens/step | teacher tokens/step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    frac, rate = show_fraction, show_rate
    for bench, m in eval_record["metrics"].items():
        lines.append(
            f"| {bench} | {frac(m['student_accuracy'])} | {frac(m['teacher_accuracy'])} | {frac(m['retention'])} | "
            f"{rate(m['student_tokens_per_step'])} | {rate(m['teacher_tokens_per_step'])} |"
        )
    alias = serving_alias(reg["promoted"])
    # the run's own registry and this venv's bin: the line works as printed, activated venv or not
    serve = serve_command(reg["name"], alias, tracking_uri=run.tracking_uri, venv_bin=str(Path(sys.executable).parent))
    lines += [
        "",
        f"Training: {train_summary.get('rollout_step', '?')} rollout steps over stages "
        f"{', '.join(r['stage'] for r in train_records)}; {show_count(train_summary.get('cumulative_train_tokens'))} "
        "training tokens.",
        "",
        f"Registered **{reg['name']}** version **{reg['version']}** with alias(es) {', '.join(reg['aliases'])}. "
        f"Gate: {reg['gate']}",
        "",
        f"- MLflow run: [{run.parent_run_id}]({run_url}) (all runs: {runs_url})",
        f"- Model version: [{reg['name']} v{reg['version']}]({model_url})",
        f'- Load it: `mlflow.pyfunc.load_model("models:/{reg["name"]}@{alias}")`. {alias_note(reg["promoted"])}',
        f"- Serve it: `{serve}` (README: serving the registered model)",
    ]
    if flow_url:
        lines.append(f"- Prefect flow run: [{run.flow_run_id}]({flow_url})")
    if mlflow_cmd:
        lines.append(f"- MLflow UI: `{mlflow_cmd}` then open the links above")
    if prefect_cmd:
        lines.append(f"- Prefect UI: `{prefect_cmd}` then open the flow run link")
    lines += ["", f"Recipe `{run.recipe_source}` {' '.join(run.overrides)}"]  # last: overrides can be long
    facts = {
        "run_dir": run.run_dir,
        "tracking_uri": run.tracking_uri,
        "mlflow_run_id": run.parent_run_id,
        "mlflow_run_url": run_url,
        "mlflow_runs_url": runs_url,
        "model_name": reg["name"],
        "model_version": reg["version"],
        "aliases": reg["aliases"],
        "model_url": model_url,
        "promoted": reg["promoted"],
        "gate": reg["gate"],
        "flow_run_id": run.flow_run_id,
        "flow_run_url": flow_url,
        "mlflow_ui_command": mlflow_cmd,
        "serve_command": serve,
        "prefect_ui_command": prefect_cmd,
        "metrics": eval_record["metrics"],
        "training_tokens": train_summary.get("cumulative_train_tokens"),
        "rollout_steps": train_summary.get("rollout_step"),
        "sweep_dir": eval_record["sweep_dir"],
        "teacher_results": eval_record["teacher_results"],
        "student_results": eval_record["student_results"],
        "train_dir": str(train_dir),
    }
    return "\n".join(lines) + "\n", facts


@task(name="summarise", cache_policy=NO_CACHE)
def summarise(run_file: str, eval_record: dict, train_records: list[dict], register_record: dict) -> dict:
    """Write ``summary.md``/``summary.json``, publish the Markdown artifact, close the MLflow parent run."""
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    run = PipelineRun.load(run_file)
    markdown, facts = render_summary(run, eval_record, train_records, register_record)
    atomic_write_text(Path(run.run_dir) / SUMMARY_MD, markdown)
    atomic_write_text(Path(run.run_dir) / SUMMARY_JSON, json.dumps(facts, indent=2) + "\n")
    create_markdown_artifact(
        markdown=markdown,
        key=f"opdlm-{run.recipe().name}-summary".lower().replace("_", "-"),
        description=f"opdlm run {Path(run.run_dir).name}",
    )
    client = tracking.client_for(run.tracking_uri)
    tracking.log_artifacts(client, run.parent_run_id, [Path(run.run_dir) / SUMMARY_MD])
    tracking.set_tags(
        client,
        run.parent_run_id,
        {
            "model.name": register_record["name"],
            "model.version": register_record["version"],
            tracking.NOTE_TAG: markdown,
        },
    )  # the run page's Description
    client.set_terminated(run.parent_run_id, status="FINISHED")
    logger.info("summary -> %s", Path(run.run_dir) / SUMMARY_MD)
    return facts


def close_failed_runs(flow, flow_run, state) -> None:
    """Prefect ``on_failure`` / ``on_crashed`` hook: mark the flow run's open MLflow runs FAILED."""
    from opdlm.pipeline.layout import tracking_uri

    client = tracking.client_for(tracking_uri())
    closed = tracking.fail_open_runs(client, str(flow_run.id))
    if closed:
        print(f"marked {len(closed)} MLflow run(s) of the failed flow run FAILED: {', '.join(closed)}")


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run(run_file: str, records: dict) -> dict:
    """Close the MLflow parent run of a flow that stops before registration (a single-stage flow)."""
    run = PipelineRun.load(run_file)
    atomic_write_text(Path(run.run_dir) / SUMMARY_JSON, json.dumps(records, indent=2, default=str) + "\n")
    client = tracking.client_for(run.tracking_uri)
    client.set_terminated(run.parent_run_id, status="FINISHED")
    return records
