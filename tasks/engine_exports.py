"""Serving-engine exports of a registered student, logged as artifacts of its MLflow run.

The register task calls :func:`log_engine_exports` on the run that logs the model (the pipeline run).
The exports themselves are :func:`opdlm.pipeline.stages.engine_export_stage`, the function ``opdlm
stage engines`` (DVC) runs too; here each one is logged beside the model version as
``export/<format>/``. A student an engine would mis-serve is not an error of the pipeline: the
refusal is recorded in the run tag ``export.<format>.status``: its first word is ``ok`` (then the artifact
path) or ``refused`` (then the reason), so a run overview reads it as a status, not as a failure.
"""

from __future__ import annotations

from pathlib import Path

from opdlm.pipeline.stages import engine_export_stage

MAX_TAG = 5000  # MLflow's limit on a tag value


def status_tag(fmt: str) -> str:
    """The run tag that says how the export for engine ``fmt`` went (``ok: ...`` or ``refused: ...``)."""
    return f"export.{fmt}.status"


def log_engine_exports(
    run_id: str, student_dir: str | Path, out_root: str | Path, formats: list[str]
) -> dict[str, str]:
    """Export ``student_dir`` for each engine in ``formats`` and log it to MLflow run ``run_id``.

    Returns:
        format -> ``export/<format>`` (the artifact path) or ``refused: <reason>``.
    """
    import mlflow

    client = mlflow.MlflowClient()
    results: dict[str, str] = {}
    for fmt, outcome in engine_export_stage(formats, student_dir, out_root, overwrite=True).items():
        if outcome.startswith("refused: "):
            results[fmt] = outcome
            continue
        client.log_artifacts(run_id, outcome, artifact_path=f"export/{fmt}")
        results[fmt] = f"export/{fmt}"
    for fmt, value in results.items():
        client.set_tag(run_id, status_tag(fmt), (value if value.startswith("refused: ") else f"ok: {value}")[:MAX_TAG])
    return results
