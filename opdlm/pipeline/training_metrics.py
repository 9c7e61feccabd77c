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
