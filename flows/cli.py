"""``opdlm pipeline``: run the whole Prefect pipeline flow on a recipe.

This command lives in ``flows/`` (imports run flows -> tasks -> opdlm) and joins the ``opdlm`` CLI
through the ``opdlm.commands`` entry point declared in pyproject.toml, so the library never imports
the orchestration layer, not even lazily.

The recipe and overrides are validated here first, so a typo fails in a second with one line, before
Prefect or MLflow start. The flow runs on a temporary local Prefect server unless ``PREFECT_API_URL``
names one, and logs to ``MLFLOW_TRACKING_URI`` (default: ``sqlite`` under ``OPDLM_RUNS_DIR``).
"""

from __future__ import annotations

import sys

import typer

from opdlm.numbers import show_fraction, show_rate

# Quiet, offline-friendly defaults for the orchestration libraries (a user's own settings win).
ENV_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # start-up takes ~20 s on 2 busy cores
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
QUIET_BARS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def print_summary(facts: dict) -> None:
    """Where the run's results are and how to look at them."""
    echo = typer.echo
    for bench, m in facts["metrics"].items():
        echo(
            f"{bench}: student {show_fraction(m['student_accuracy'])}, teacher {show_fraction(m['teacher_accuracy'])}, "
            f"retention {show_fraction(m['retention'])}, {show_rate(m['student_tokens_per_step'])} tokens/step"
        )
    echo(
        f"registered model: {facts['model_name']} version {facts['model_version']} ({', '.join(facts['aliases'])}); "
        f"gate: {facts['gate']}"
    )
    echo(f"run folder:       {facts['run_dir']}")
    echo(f"MLflow run:       {facts['mlflow_run_id']} in {facts['tracking_uri']}")
    if facts.get("serve_command"):
        echo(f"serve it:         {facts['serve_command']}")
    if facts.get("mlflow_ui_command"):
        echo(f"MLflow UI:        {facts['mlflow_ui_command']}")
    echo(f"                  {facts['mlflow_run_url']}")
    if facts.get("mlflow_runs_url"):
        echo(f"                  {facts['mlflow_runs_url']}")
    echo(f"                  {facts['model_url']}")
    if facts.get("flow_run_url"):
        if facts.get("prefect_ui_command"):
            echo(f"Prefect UI:       {facts['prefect_ui_command']}")
        echo(f"                  {facts['flow_run_url']}")


def check_artifact_store() -> None:
    """An S3 artifact root must answer before the run starts: no run folder, MLflow run or retries for a dead store."""
    from opdlm.pipeline.layout import artifact_root

    root = artifact_root()
    if root and root.startswith("s3://"):
        from opdlm.storage.s3 import check_reachable

        check_reachable(root)


def register(app: typer.Typer) -> None:
    @app.command("pipeline")
    def pipeline(
        recipe: str = typer.Option(
            "configs/tiny.yaml", "--recipe", help="Recipe YAML, or a shipped recipe's name (tiny, qwen3-4b, ...)."
        ),
        overrides: list[str] = typer.Argument(
            None, help="Dotted overrides, e.g. train.stages.0.rollout_steps=5 eval.limit=50."
        ),
    ) -> None:
        """Run data -> teacher -> convert -> curriculum OPD -> eval -> register as a Prefect flow tracked in MLflow."""
        import os

        from opdlm.config.recipe import load_recipe
        from opdlm.pipeline.preflight import check_eval_inputs, check_prefect_server, check_tracking_server
        from opdlm.pipeline.recipes import resolve_recipe

        path = resolve_recipe(recipe)
        loaded = load_recipe(path, overrides or [])  # fail fast, before Prefect starts
        check_eval_inputs(loaded)  # benchmark files and lm-eval tasks, read only after training
        check_artifact_store()
        check_tracking_server(None)
        check_prefect_server()
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if not sys.stderr.isatty():  # CI, a log file: libraries' bars would write a line per refresh
            for key, value in QUIET_BARS.items():
                os.environ.setdefault(key, value)
        from flows.pipeline import pipeline_flow

        facts = pipeline_flow(recipe=str(path), overrides=list(overrides or []))
        print_summary(facts)
