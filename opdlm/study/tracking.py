"""Log a finished study to MLflow: one parent run (table, plots, headline) and one nested run per arm.

mlflow is imported inside the functions (the library never imports it at module level). The
tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a SQLite file in the study folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from opdlm.train.folder import TrainingFolder

PARENT_TAG = "mlflow.parentRunId"
METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call


def tracking_uri_for(out_dir: str | Path, uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:////<out_dir>/mlruns.db`` (absolute)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_dir).absolute() / 'mlruns.db'}"


def _metrics(values: dict, step: int = 0, now: int | None = None) -> list:
    from mlflow.entities import Metric

    now = now or int(time.time() * 1000)
    return [
        Metric(k, float(v), now, step)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]


def _training_curve(model_dir: str | None) -> list:
    """Per-rollout-step loss and tokens from the arm's metrics.jsonl (empty when it is gone)."""
    path = TrainingFolder(model_dir or "").metrics_file
    if not model_dir or not path.is_file():
        return []
    now, out = int(time.time() * 1000), []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        keys = ("loss", "cumulative_train_tokens", "rollout_tokens", "eos_rate", "tokens_per_step", "length_cap")
        out += _metrics({f"train/{k}": row[k] for k in keys if k in row}, int(row["step"]), now)
    return out


def log_study(
    out_dir: str | Path,
    experiment: str,
    results: dict,
    arm_results: list[dict],
    artifacts: list[str | Path],
    tracking_uri: str | None = None,
) -> str:
    """Log the study; returns the parent run id.

    Args:
        out_dir: the study folder (SQLite database and artifact root when no tracking URI is set).
        experiment: experiment name (created when missing, artifacts under ``out_dir/mlartifacts``).
        results: the study JSON (``summary``, ``meta``); its headline numbers become metrics.
        arm_results: one result per trained arm; each becomes a nested run.
        artifacts: files logged to the parent run (table, plots).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    uri = tracking_uri_for(out_dir, tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = (
        found.experiment_id
        if found
        else client.create_experiment(experiment, artifact_location=(Path(out_dir).absolute() / "mlartifacts").as_uri())
    )
    parent = client.create_run(exp_id, run_name="study", tags={"opdlm.kind": "study"}).info.run_id
    meta, summary = results["meta"], results["summary"]
    params = {
        "command": meta["command"],
        "teacher": meta["teacher"],
        "n_eval": meta["n_eval"],
        "arms": len(arm_results),
    }
    headline = {
        k: summary.get(k)
        for k in ("teacher_accuracy", "untrained_accuracy", "opd_tokens", "opd_accuracy", "opd_retention")
    }
    ratio = summary.get("token_ratio") or {}
    headline["token_ratio"] = ratio.get("ratio")
    client.log_batch(
        parent,
        metrics=_metrics(headline),
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        synchronous=True,
    )
    for path in map(Path, artifacts):
        if path.is_file():
            client.log_artifact(parent, str(path))
    for arm in arm_results:
        run = client.create_run(
            exp_id, run_name=arm["arm_id"], tags={PARENT_TAG: parent, "opdlm.kind": "study-arm"}
        ).info.run_id
        arm_params = {
            k: arm.get(k) for k in ("objective", "variant", "group", "budget", "seed", "rollout_steps", "overrides")
        }
        arm_metrics = {
            k: arm.get(k)
            for k in (
                "accuracy",
                "teacher_accuracy",
                "retention",
                "training_tokens",
                "tokens_per_step",
                "mean_forwards",
                "final_loss",
                "train_seconds",
                "flops",
            )
        }
        client.log_batch(
            run,
            params=[Param(k, str(v)[:6000]) for k, v in arm_params.items()],
            tags=[RunTag("opdlm.arm_id", arm["arm_id"])],
            synchronous=True,
        )
        metrics = _metrics(arm_metrics) + _training_curve(arm.get("model_dir"))
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            client.log_batch(run, metrics=metrics[i : i + METRICS_PER_BATCH], synchronous=True)
        client.set_terminated(run, status="FINISHED")
    client.set_terminated(parent, status="FINISHED")
    return parent
