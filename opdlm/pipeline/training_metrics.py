"""The one tracking channel: the trainer's ``metrics.jsonl`` (one JSON line per rollout step) into MLflow.

Training (rank 0 only) writes the file and never talks to a tracking service. :class:`MetricReplay`
puts its lines into MLflow runs, each step exactly once per run, whatever launched the training:
the pipeline calls it every few seconds while a ``python``/``torchrun``/``deepspeed`` subprocess
runs and once after it ends; after a SLURM job (or any training run elsewhere) ``opdlm track
--train-dir DIR --run-id ID`` replays the shared folder the same way. mlflow is imported only when
a replay logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# MLflow's HTTP client retries a dead server for minutes by default (7 retries, exponential backoff,
# 120 s per request). A replay that has nothing to lose (the metrics stay in the file) gives up sooner:
# at most ~35 s for a server that accepts and never answers, ~5 s for one that refuses.
TRACKING_HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


@contextlib.contextmanager
def bounded_mlflow_requests() -> Iterator[None]:
    """MLflow HTTP calls inside the block time out and stop retrying per :data:`TRACKING_HTTP_LIMITS`
    (a value the user set in the environment wins); the environment is restored afterwards."""
    saved = {k: os.environ.get(k) for k in TRACKING_HTTP_LIMITS}
    for key, value in TRACKING_HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def numeric_metrics(record: dict) -> dict[str, float]:
    """The finite numeric fields of one metrics line (strings such as ``stage_name`` are left out)."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, str) or value is None:
            continue
        if isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def read_metric_steps(path: str | Path, after_step: int = -1) -> list[tuple[int, dict[str, float]]]:
    """``(step, metrics)`` for every complete line of ``path`` whose step is greater than ``after_step``.

    A missing file gives no steps; a partly written last line (the trainer is mid-write) is skipped
    and read on the next call.

    Raises:
        OpdlmError: a complete line is not UTF-8 text (named with its line number).
    """
    path = Path(path)
    if not path.is_file():
        return []
    steps = []
    for line in _complete_text(path).splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if step > after_step:
            steps.append((step, numeric_metrics(record)))
    return steps


def _complete_text(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 in its unfinished last line (a character cut mid-write) are
    left for the next read, anywhere else they are an error naming the line."""
    from opdlm.errors import OpdlmError

    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        end = data.rfind(b"\n") + 1
        if exc.start >= end:
            return data[:end].decode("utf-8", errors="strict") if end else ""
        line = data.count(b"\n", 0, exc.start) + 1
        raise OpdlmError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); the trainer writes UTF-8 JSON lines, "
            "so the file was changed by something else"
        ) from None


# How a training line appears in a tracking service. The run page of MLflow sorts charts into
# sections by the prefix before the first "/" (sections in code-point order, unprefixed ones last),
# so the curves a person looks at first carry a prefix that sorts before any letter.
KEY_SECTION = "1_key"
KEY_CURVES = ("loss", "tokens_per_step", "mean_response_tokens", "length_cap")
# Fields that are settings of a stage, not measurements: constant within a stage, so a tracking
# service gets them once as parameters instead of as flat metric series.
STAGE_CONSTANTS = ("stage", "block_size", "rollouts", "optimizer_steps")


def tracked_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """One step's numbers under their tracking names, key curves first.

    ``loss`` (the forward KL under OPD), tokens per step, rollout length and its cap go to section
    ``1_key``; stage settings (:data:`STAGE_CONSTANTS`) are left out; other scalar fields go to
    section ``train``; already sectioned names (``kl_by_block_position/0``) keep their section.
    """
    key = {f"{KEY_SECTION}/{k}": metrics[k] for k in KEY_CURVES if k in metrics}
    rest = {}
    for name, value in metrics.items():
        if name in KEY_CURVES or name in STAGE_CONSTANTS:
            continue
        rest[name if "/" in name else f"train/{name}"] = value
    return {**key, **rest}


def stage_constants(steps: list[tuple[int, dict[str, float]]]) -> dict[str, int | float]:
    """The stage settings (:data:`STAGE_CONSTANTS`) of the first step that has them, as plain numbers."""
    for _, metrics in steps:
        found = {k: metrics[k] for k in STAGE_CONSTANTS if k in metrics}
        if found:
            return {k: int(v) if float(v).is_integer() else v for k, v in found.items()}
    return {}


# Every training line has a length cap (the loop sets it each step), so the history of this tracked
# name is the set of steps a run already holds.
STEP_MARKER = f"{KEY_SECTION}/length_cap"
METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per log_batch call


def log_metric_steps(client: Any, run_id: str, steps: Iterable[tuple[int, dict[str, float]]]) -> None:
    """Log ``(step, {name: value})`` pairs to MLflow run ``run_id`` in batches (None values skipped).

    Args:
        client: an ``mlflow.MlflowClient``.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for step, metrics in steps for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + METRICS_PER_BATCH], synchronous=True)


class MetricReplay:
    """Replays a training folder's ``metrics.jsonl`` into MLflow runs, each step at most once per run.

    Each call logs the lines that appeared since the last one, under their tracking names
    (:func:`tracked_metrics`), and returns their steps. Which steps a run already holds is read from
    the run itself (:data:`STEP_MARKER`) when the replay is made, so a retried task, a cached stage
    or a replay after a SLURM job never logs a step twice.

    Args:
        client: an ``mlflow.MlflowClient``.
        run_ids: the runs to log into (a stage's run and the pipeline's parent run).
        metrics_file: the folder's ``metrics.jsonl`` (:attr:`opdlm.train.folder.TrainingFolder.metrics_file`).
        steps: only these global rollout steps (a curriculum stage's range); None for every line.
    """

    def __init__(self, client: Any, run_ids: Iterable[str], metrics_file: str | Path, steps: range | None = None):
        self.client, self.metrics_file, self.steps = client, Path(metrics_file), steps
        self.logged: dict[str, set[int]] = {
            run_id: {m.step for m in client.get_metric_history(run_id, STEP_MARKER)} for run_id in run_ids
        }

    def __call__(self) -> list[int]:
        lines = [(s, m) for s, m in read_metric_steps(self.metrics_file) if self.steps is None or s in self.steps]
        new: set[int] = set()
        for run_id, logged in self.logged.items():
            missing = [(s, tracked_metrics(m)) for s, m in lines if s not in logged]
            if missing:
                log_metric_steps(self.client, run_id, missing)
                logged.update(s for s, _ in missing)
                new.update(s for s, _ in missing)
        return sorted(new)
