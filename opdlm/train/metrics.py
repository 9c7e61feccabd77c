"""The trainer's metric loggers: progress on the console and ``metrics.jsonl`` in the training folder.

``metrics.jsonl`` is the one tracking channel: the trainer never talks to a tracking service; the
pipeline (or ``opdlm track`` after a SLURM job) replays the file into MLflow
(:class:`opdlm.pipeline.training_metrics.MetricReplay`). Nothing here touches the outside world.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Protocol, TextIO

from opdlm.progress import progress
from opdlm.train.folder import TrainingFolder


class MetricLogger(Protocol):
    """Receives run parameters once and a dict of scalar metrics per rollout step (rank 0 only)."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class ConsoleLogger:
    """Training progress on stderr through :func:`opdlm.progress.progress` (a live bar on a terminal,
    otherwise a line every ~10% or ~30 s), the latest step's headline metrics as its figures."""

    KEYS = ("loss", "length_cap", "rollout_tokens", "loss_tokens", "eos_rate", "tokens_per_step", "grad_norm", "lr")

    def __init__(self, total_steps: int, stream: TextIO | None = None):
        self.total_steps, self.stream = total_steps, stream or sys.stderr
        self._bar = None

    def log_params(self, params: dict[str, Any]) -> None:
        shown = {k: params[k] for k in ("objective", "stages", "total_rollout_steps", "out") if k in params}
        print("train: " + ", ".join(f"{k}={v}" for k, v in shown.items()), file=self.stream, flush=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._bar is None:  # created at the first step: a resumed run starts its count there
            self._bar = progress(self.total_steps, "train", "step", initial=step, stream=self.stream)
        stage = metrics.get("stage_name", metrics.get("stage", ""))
        self._bar.set_postfix({"stage": stage, **{k: _fmt(metrics[k]) for k in self.KEYS if k in metrics}})
        self._bar.update(step + 1 - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self.stream.flush()


class JsonlLogger:
    """Appends ``{"step": n, ...metrics}`` lines to a training folder's ``metrics.jsonl``.

    Args:
        folder: the training folder (its ``metrics_file`` and ``params_file``).
        resume_after: on resume, lines of steps after this one (re-run after a crash) are dropped
            first, so the file holds each step exactly once.
    """

    def __init__(self, folder: TrainingFolder, resume_after: int | None = None):
        self.path, self.params_path = folder.metrics_file, folder.params_file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_after is not None and self.path.is_file():
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if _step_of(ln) is not None and _step_of(ln) <= resume_after
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_after is None and self.path.is_file():
            self.path.unlink()
        self._fh = self.path.open("a")

    def log_params(self, params: dict[str, Any]) -> None:
        self.params_path.write_text(json.dumps(params, indent=1, default=str))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._fh.write(json.dumps({"step": step, **metrics}, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class MultiLogger:
    """Fans every call out to several loggers."""

    def __init__(self, loggers: list[MetricLogger]):
        self.loggers = loggers

    def log_params(self, params: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_params(params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
