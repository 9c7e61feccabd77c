"""``opdlm track``: replay a training folder's ``metrics.jsonl`` into an MLflow run, each step once.

The pipeline replays its training subprocesses itself; this is the same replay
(:class:`opdlm.pipeline.training_metrics.MetricReplay`) for training that ran elsewhere: a SLURM job
(``infra/slurm/train.sbatch`` calls it when the job ends), ``opdlm launch`` on any cluster, or a
plain ``opdlm train``. Steps the run already holds are skipped, so running it again (or on a
folder the pipeline already streamed) logs nothing twice.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("track")
    def track(
        train_dir: Path = typer.Option(..., "--train-dir", help="An `opdlm train` output folder."),
        run_id: str = typer.Option(
            ..., "--run-id", envvar="MLFLOW_RUN_ID", help="MLflow run to log into (default: $MLFLOW_RUN_ID)."
        ),
        tracking_uri: str = typer.Option(
            None,
            "--tracking-uri",
            envvar="MLFLOW_TRACKING_URI",
            help="MLflow tracking server or store (default: $MLFLOW_TRACKING_URI).",
        ),
    ) -> None:
        """Log every training step of TRAIN_DIR's metrics.jsonl that the MLflow run does not hold yet."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from opdlm.errors import OpdlmError
        from opdlm.pipeline.training_metrics import MetricReplay
        from opdlm.train.folder import TrainingFolder

        folder = TrainingFolder(train_dir)
        if not folder.metrics_file.is_file():
            raise OpdlmError(
                f"{folder.metrics_file} does not exist: {train_dir} is no opdlm training folder or trained no step yet"
            )
        client = MlflowClient(tracking_uri=tracking_uri)
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            first = (str(exc).splitlines() or [""])[0]
            raise OpdlmError(f"MLflow run {run_id!r} not found at {client.tracking_uri}: {first}") from None
        replay = MetricReplay(client, [run_id], folder.metrics_file)
        already = len(replay.logged[run_id])
        logged = replay()
        span = f" (steps {logged[0]}..{logged[-1]})" if logged else ""
        typer.echo(
            f"track: {len(logged)} step(s){span} of {folder.metrics_file} logged into MLflow run {run_id}; "
            f"{already} were already there"
        )
