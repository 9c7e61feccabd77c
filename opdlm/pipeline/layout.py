"""Where the pipeline writes: the runs folder, content-addressed stage outputs, the tracking store.

Everything lives under one runs folder (``OPDLM_RUNS_DIR``, default ``runs/``)::

    runs/
      mlruns.db, mlartifacts/        MLflow's default store (unless MLFLOW_TRACKING_URI is set)
      store/<stage>-<key>/           stage outputs named by their content key (reused across runs)
      <recipe>/<stamp>-<id>/         one pipeline run: resolved recipe, eval tables, plots, summary

Stage outputs are keyed by content (config hash, dataset md5), so a restarted pipeline finds the
training folder it was writing and resumes from its newest checkpoint.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

RUNS_ENV = "OPDLM_RUNS_DIR"
ARTIFACT_ROOT_ENV = "OPDLM_ARTIFACT_ROOT"


def runs_dir() -> Path:
    """The absolute runs folder (``OPDLM_RUNS_DIR``, default ``./runs``)."""
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser().absolute()


def store_dir(stage: str, key: str, runs: str | Path | None = None) -> Path:
    """The content-addressed output folder of ``stage`` for content key ``key`` (under ``runs``)."""
    return Path(runs or runs_dir()) / "store" / f"{stage}-{key}"


def new_run_dir(recipe_name: str, runs: str | Path | None = None) -> Path:
    """A fresh folder for one pipeline run: ``runs/<recipe>/<YYYYmmdd-HHMMSS>-<6 hex>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(runs or runs_dir()) / recipe_name / f"{stamp}-{secrets.token_hex(3)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite file in the runs folder (absolute: four slashes)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs_dir() / 'mlruns.db'}"


def artifact_root() -> str | None:
    """Where a new experiment keeps artifacts: ``OPDLM_ARTIFACT_ROOT`` (e.g. ``s3://bucket/mlflow``,
    reached through ``MLFLOW_S3_ENDPOINT_URL``); else, with a tracking server, None (the server's own
    default); else ``runs/mlartifacts``."""
    if os.environ.get(ARTIFACT_ROOT_ENV):
        return os.environ[ARTIFACT_ROOT_ENV]
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        return None
    return (runs_dir() / "mlartifacts").as_uri()


def code_version(repo: str | Path | None = None) -> str:
    """The git commit of the code (``+dirty`` when the work tree has uncommitted changes), or ``unknown``."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
