"""Checks a run makes before its first expensive step: what would otherwise fail only after training.

The recipe validates its own fields and files when it loads (:mod:`opdlm.config`); these are the
inputs that need more than the config layer to check: the evaluation's benchmark files and lm-eval
task names (read at the end of a run), and the tracking and orchestration servers a run talks to all
along. Each failure is one line naming what is missing or who does not answer.
"""

from __future__ import annotations

import os

from opdlm.config.recipe import Recipe
from opdlm.errors import ConfigError, OpdlmError

SERVER_TIMEOUT_S = 5.0


def check_eval_inputs(recipe: Recipe) -> None:
    """Every benchmark of ``eval.benchmarks`` loads from ``eval.data_dir``, and every ``eval.lm_eval_tasks``
    name is an lm-eval task, before anything trains or decodes.

    Raises:
        OpdlmError: a benchmark file is missing or unreadable (named by the loader), or a task is unknown.
    """
    from opdlm.eval.benchmarks import load_benchmark

    cfg = recipe.eval
    for name in cfg.benchmarks:
        try:
            load_benchmark(name, cfg.data_dir, cfg.limit, cfg.seed)
        except OpdlmError as exc:
            raise type(exc)(f"eval.benchmarks: {exc}") from None
    if cfg.lm_eval_tasks:
        from opdlm.lmeval.run import task_manager_for

        task_manager_for(cfg.lm_eval_tasks, cfg.lm_eval_include_path, "eval.lm_eval_tasks")


def check_tracking_server(uri: str | None) -> None:
    """An ``http(s)`` MLflow tracking server must answer within seconds (a file or database store needs no check).

    Raises:
        ConfigError: it refuses or does not answer (bounded retries, :func:`bounded_mlflow_requests`).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or not uri.startswith(("http://", "https://")):
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from opdlm.pipeline.training_metrics import bounded_mlflow_requests

    with bounded_mlflow_requests():
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except MlflowException as exc:
            raise ConfigError(f"MLflow tracking server {uri} does not answer: {_cause(str(exc))}") from None


def check_prefect_server() -> None:
    """``PREFECT_API_URL``, when set, must answer its health check within seconds (unset: a temporary server).

    Raises:
        ConfigError: it refuses, does not answer, or is not a Prefect API.
    """
    import urllib.error
    import urllib.request

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S) as reply:
            reply.read(64)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"Prefect API {url} (PREFECT_API_URL) does not answer: {_cause(str(exc))}; start it "
            "(prefect server start) or unset PREFECT_API_URL to use a temporary local one"
        ) from None


def _cause(text: str) -> str:
    if "refused" in text:
        return "connection refused"
    if "timed out" in text.lower() or "Timeout" in text:
        return "no reply in time"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    first = (text.splitlines() or [""])[0]
    return first[:160]
