"""Reading the trainer's ``metrics.jsonl`` (one JSON line per rollout step) for a tracking service.

The trainer writes the file; the pipeline tails it while a training subprocess runs and forwards
each new step's numbers (the library itself never talks to a tracking service).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


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
    """
    path = Path(path)
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if step > after_step:
            steps.append((step, numeric_metrics(record)))
    return steps


def last_record(path: str | Path) -> dict:
    """The last complete line of ``metrics.jsonl`` as a dict ({} when there is none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}
