"""``opdlm track``: replay a training folder's ``metrics.jsonl`` into an MLflow run, each step once.

The pipeline replays its training subprocesses itself; this is the same replay
(:class:`opdlm.pipeline.training_metrics.MetricReplay`) for training that ran elsewhere: a SLURM job
(``infra/slurm/train.sbatch`` calls it when the job ends), ``opdlm launch`` on any cluster, or a
plain ``opdlm train``. Steps the run already holds are skipped, so running it again (or on a
folder the pipeline already streamed) logs nothing twice.
"""

from __future__ import annotations

import os
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

        from opdlm.errors import OpdlmError, quote
        from opdlm.pipeline.training_metrics import MetricReplay, bounded_mlflow_requests
        from opdlm.train.folder import TrainingFolder

        folder = TrainingFolder(train_dir)
        if not folder.metrics_file.is_file():
            raise OpdlmError(
                f"{folder.metrics_file} does not exist: {train_dir} is no opdlm training folder or trained no step yet"
            )
        with bounded_mlflow_requests():
            client = MlflowClient(tracking_uri=tracking_uri)
            try:
                client.get_run(run_id)
            except MlflowException as exc:
                if not _unreachable(exc):
                    first = (str(exc).splitlines() or [""])[0]
                    raise OpdlmError(
                        f"MLflow run {run_id!r} not found at {client.tracking_uri}: {quote(first, 200)}"
                    ) from None
                raise OpdlmError(_down(client.tracking_uri, folder.metrics_file, exc)) from None
            try:
                replay = MetricReplay(client, [run_id], folder.metrics_file)
                already = len(replay.logged[run_id])
                logged = replay()
            except MlflowException as exc:
                raise OpdlmError(_down(client.tracking_uri, folder.metrics_file, exc)) from None
        span = f" (steps {logged[0]}..{logged[-1]})" if logged else ""
        typer.echo(
            f"track: {len(logged)} step(s){span} of {folder.metrics_file} logged into MLflow run {run_id}; "
            f"{already} were already there"
        )


def _unreachable(exc: Exception) -> bool:
    """Whether an MLflow error is the server not answering (refused, timed out, retries spent), not a reply."""
    text = str(exc)
    return any(m in text for m in ("Max retries exceeded", "ConnectionError", "ReadTimeout", "ConnectTimeout"))


def _down(uri: str, metrics_file: Path, exc: Exception) -> str:
    from opdlm.pipeline.training_metrics import TRACKING_HTTP_LIMITS

    text = str(exc)
    retries = (
        os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or TRACKING_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    )
    tries = int(retries) + 1
    timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or TRACKING_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    if "refused" in text:
        why = "connection refused"
    elif "timed out" in text.lower() or "Timeout" in text:
        why = f"no reply within {timeout} s"
    else:
        why = "no connection"
    return (
        f"MLflow tracking server {uri} did not answer ({why}, {tries} tries); nothing was lost: {metrics_file} "
        "keeps every step, run the same command when the server is up"
    )
