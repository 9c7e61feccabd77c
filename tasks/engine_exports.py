"""Serving-engine exports of a registered student, logged as artifacts of its MLflow run.

The register task calls :func:`log_engine_exports` on the run that logs the model (the pipeline run), so each
export (``opdlm export --format sglang|lmdeploy``) sits beside the model version as
``export/<format>/``. A student an engine would mis-serve is not an error of the pipeline: the
refusal is recorded as the run tag ``export.<format>``.
"""

from __future__ import annotations

from pathlib import Path

MAX_TAG = 5000  # MLflow's limit on a tag value


def log_engine_exports(
    run_id: str, student_dir: str | Path, out_root: str | Path, formats: list[str]
) -> dict[str, str]:
    """Export ``student_dir`` for each engine in ``formats`` and log it to MLflow run ``run_id``.

    Returns:
        format -> ``export/<format>`` (the artifact path) or ``refused: <reason>``.
    """
    import mlflow

    from opdlm.formats.engine import Refusal, export_student

    client = mlflow.MlflowClient()
    results: dict[str, str] = {}
    for fmt in formats:
        try:
            path, _ = export_student(student_dir, Path(out_root) / fmt, fmt, overwrite=True)
        except Refusal as exc:
            results[fmt] = f"refused: {exc}"
            continue
        client.log_artifacts(run_id, str(path), artifact_path=f"export/{fmt}")
        results[fmt] = f"export/{fmt}"
    if results:
        for fmt, value in results.items():
            client.set_tag(run_id, f"export.{fmt}", value[:MAX_TAG])
    return results
