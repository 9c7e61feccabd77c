"""MLflow tracking of a study, through the pipeline's own tracking code (:mod:`tasks.tracking`).

One parent run per study (opened when the flow starts, closed with the table and plots as artifacts
and its headline as metrics) and one nested run per arm, logged as the arm finishes, with its
training curve from ``metrics.jsonl`` under the same names the pipeline's training stage uses
(:func:`opdlm.pipeline.training_metrics.tracked_metrics`). Every run carries the Prefect flow run's
id, so a failed study's runs are closed by :func:`tasks.tracking.fail_open_runs`.

The tracking URI is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the
study folder; artifacts go to ``OPDLM_ARTIFACT_ROOT`` when set, else the study folder's ``mlartifacts``.
"""

from __future__ import annotations

import os
from pathlib import Path

from opdlm.pipeline import layout
from opdlm.pipeline.training_metrics import read_metric_steps, tracked_metrics
from opdlm.train.folder import TrainingFolder
from tasks import tracking

STUDY_RUN_NAME = "study"
KIND_TAG = "opdlm.kind"
ARM_PARAMS = ("objective", "variant", "group", "budget", "seed", "rollout_steps", "overrides", "description")
HELDOUT_PARAMS = ("kind", "split", "trained_skills", "heldout_skills", "budget_level")  # held-out arms only
ARM_METRICS = (
    "accuracy",
    "teacher_accuracy",
    "retention",
    "training_tokens",
    "tokens_per_step",
    "mean_forwards",
    "final_loss",
    "train_seconds",
    "flops",
    "flops_rollout",
    "flops_teacher",
    "flops_student",
)
HEADLINE = ("teacher_accuracy", "untrained_accuracy", "opd_tokens", "opd_flops", "opd_accuracy", "opd_retention")


def tracking_uri_for(out_dir: str | Path, uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:////<out_dir>/mlruns.db`` (absolute)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_dir).absolute() / 'mlruns.db'}"


def artifact_location(out_dir: str | Path, uri: str) -> str | None:
    """Where the study experiment keeps artifacts: ``OPDLM_ARTIFACT_ROOT``; a tracking server's own
    default; else ``out_dir/mlartifacts``."""
    if os.environ.get(layout.ARTIFACT_ROOT_ENV):
        return os.environ[layout.ARTIFACT_ROOT_ENV]
    if uri.startswith(("http://", "https://")):
        return None
    return (Path(out_dir).absolute() / "mlartifacts").as_uri()


def open_study_run(
    uri: str, experiment: str, out_dir: str | Path, params: dict, tags: dict[str, str]
) -> tuple[str, str]:
    """Create the study's parent run; returns ``(experiment_id, run_id)``.

    Args:
        params: logged flattened (the study section, the recipe every arm starts from, the command).
        tags: extra tags (the Prefect flow run, the code version).
    """
    client = tracking.client_for(uri)
    experiment_id = tracking.ensure_experiment(client, experiment, artifact_location(out_dir, uri))
    run_id = tracking.start_run(client, experiment_id, STUDY_RUN_NAME, tags={KIND_TAG: "study", **tags})
    tracking.log_params(client, run_id, params)
    return experiment_id, run_id


def _numbers(values: dict, keys: tuple[str, ...]) -> dict[str, float]:
    return {
        k: float(values[k])
        for k in keys
        if isinstance(values.get(k), int | float) and not isinstance(values.get(k), bool)
    }


def log_arm(uri: str, experiment_id: str, parent_run_id: str, arm: dict, tags: dict[str, str]) -> str:
    """One finished arm as a nested run: its settings, scores, FLOPs and training curve; returns its id."""
    client = tracking.client_for(uri)
    with tracking.stage_run(
        client,
        experiment_id,
        parent_run_id,
        arm["arm_id"],
        tags={KIND_TAG: "study-arm", "opdlm.arm_id": arm["arm_id"], **tags},
    ) as run_id:
        tracking.log_params(client, run_id, {k: arm.get(k) for k in ARM_PARAMS + HELDOUT_PARAMS if k in arm})
        curve = []
        if arm.get("model_dir"):
            curve = [
                (s, tracked_metrics(m)) for s, m in read_metric_steps(TrainingFolder(arm["model_dir"]).metrics_file)
            ]
        per_skill = {f"accuracy_{k}": float(v["accuracy"]) for k, v in (arm.get("per_skill") or {}).items()}
        tracking.log_metric_steps(client, run_id, [(0, _numbers(arm, ARM_METRICS) | per_skill), *curve])
    return run_id


def headline_metrics(summary: dict) -> dict[str, float]:
    """The study's headline numbers as metric values (ratios None when undetermined: left out)."""
    out = _numbers(summary, HEADLINE)
    for name in ("token_ratio", "flops_ratio"):
        ratio = (summary.get(name) or {}).get("ratio")
        if ratio is not None:
            out[name] = float(ratio)
    return out


def close_study_run(uri: str, run_id: str, results: dict, artifacts: list[Path], note: str) -> None:
    """Log the headline and the table and plots, set the run's description, mark it FINISHED."""
    client = tracking.client_for(uri)
    tracking.log_metrics(client, run_id, headline_metrics(results["summary"]))
    tracking.log_params(
        client, run_id, {"n_eval": results["meta"]["n_eval"], "arms": len(results["rows"]) - 1}
    )  # minus the untrained reference row
    tracking.log_artifacts(client, run_id, [p for p in artifacts if p.is_file()])
    tracking.set_tags(client, run_id, {tracking.NOTE_TAG: note[:5000]})
    client.set_terminated(run_id, status="FINISHED")


def fail_study_runs(uri: str, flow_run_id: str) -> list[str]:
    """Mark every still-running MLflow run of the study's flow run FAILED; returns their ids."""
    return tracking.fail_open_runs(tracking.client_for(uri), flow_run_id)
