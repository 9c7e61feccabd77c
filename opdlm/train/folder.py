"""The training folder's contract: what ``opdlm train --out DIR`` writes there, and how to read it.

Every reader and writer of a training folder (the loop, ``opdlm train``, the pipeline's train and
register tasks, the DVC export stage, the study, the tests) goes through :class:`TrainingFolder`,
so each file name is spelled once and "is this run finished?" is decided once
(:meth:`TrainingFolder.is_finished`).

Layout::

    DIR/
      run.json             binds the folder to its recipe (fingerprint), written once the models load
      params.json          the run's parameters (rank 0, at every start or resume)
      metrics.jsonl        one JSON line per rollout step, each step exactly once (rank 0)
      train_summary.json   counters of the last completed call; ``finished`` once the curriculum ends
      checkpoints/step-NNNNNN/   atomic, checksummed checkpoints (see :mod:`opdlm.train.checkpoint`)
      converted/           the teacher converted into the starting student (when no --student was given)
      config.json, model.safetensors, tokenizer files   the exported weights of the last completed call
"""

from __future__ import annotations

import json
from pathlib import Path

from opdlm.errors import OpdlmError

RUN_FILE = "run.json"
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"
CHECKPOINTS_DIR = "checkpoints"
CONVERTED_DIR = "converted"


class TrainingFolder:
    """One ``opdlm train`` output folder (it need not exist yet).

    Args:
        path: the folder (``--out``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TrainingFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def params_file(self) -> Path:
        return self.path / PARAMS_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def converted(self) -> Path:
        return self.path / CONVERTED_DIR

    def summary(self) -> dict:
        """``train_summary.json`` as a dict ({} when it is missing or unreadable: nothing completed yet)."""
        try:
            summary = json.loads(self.summary_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return summary if isinstance(summary, dict) else {}

    def write_summary(self, summary: dict) -> None:
        """Replace ``train_summary.json`` atomically (rank 0, at the end of a call of the loop)."""
        from opdlm.train.checkpoint import write_json

        write_json(self.summary_file, summary)

    def progress(self) -> int:
        """Rollout steps completed and exported by the last call of the loop (0 before the first summary)."""
        try:
            return int(self.summary().get("rollout_step", 0))
        except (TypeError, ValueError):
            return 0

    def is_finished(self, total_rollout_steps: int | None = None) -> bool:
        """Whether the run trained its whole curriculum (and, given ``total_rollout_steps``, that many steps).

        The loop writes ``finished`` once its rollout step reaches the curriculum's total
        (:func:`summary_fields`); a folder without a summary is not finished.
        """
        summary = self.summary()
        if not summary.get("finished"):
            return False
        return total_rollout_steps is None or summary.get("rollout_step") == total_rollout_steps

    def require_finished(self, total_rollout_steps: int | None = None) -> dict:
        """The summary of a finished run.

        Raises:
            OpdlmError: the run is unfinished or has no summary (one line naming the folder).
        """
        if not self.is_finished(total_rollout_steps):
            summary = self.summary()
            if not summary:
                said = f"it has no {SUMMARY_FILE}"
            elif summary.get("finished"):
                said = f"it trained {summary.get('rollout_step')} rollout steps, not {total_rollout_steps}"
            else:
                said = (
                    f"it stopped at rollout step {summary.get('rollout_step')} of {summary.get('total_rollout_steps')}"
                )
            raise OpdlmError(f"{self.path} holds no finished training run ({said})")
        return self.summary()

    def list_checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first."""
        from opdlm.train.checkpoint import list_checkpoints

        return list_checkpoints(self.checkpoints)

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint, verified against its manifest (None when there is none).

        Raises:
            CheckpointError: the newest one is partial or corrupt.
        """
        from opdlm.train.checkpoint import latest_checkpoint

        return latest_checkpoint(self.checkpoints)

    def checkpoint_at_or_after(self, step: int) -> Path:
        """The checkpoint of rollout step ``step`` (or, if rotation removed it, the oldest one after it).

        Raises:
            OpdlmError: no checkpoint at or after ``step``.
        """
        # list_checkpoints returns only step-NNNNNN folders
        found = [p for p in self.list_checkpoints() if int(p.name.split("-")[1]) >= step]
        if not found:
            raise OpdlmError(f"training folder {self.path} has no checkpoint at or after rollout step {step}")
        return found[0]


def summary_fields(rollout_step: int, total_rollout_steps: int) -> dict:
    """The summary fields that say how far a run got; ``finished`` is decided here and nowhere else."""
    return {
        "rollout_step": rollout_step,
        "total_rollout_steps": total_rollout_steps,
        "finished": rollout_step >= total_rollout_steps,
    }
