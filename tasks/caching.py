"""Prefect cache keys computed from content (config hashes, dataset md5, model fingerprints).

Prefect's default policy hashes task inputs, which for a path means the path string, not the file
behind it. A stage's key here is its content key from :mod:`opdlm.pipeline.keys`, namespaced by the
runs folder; when the stage's output folder is gone the key is None, so the task runs again rather
than returning a path to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from opdlm.pipeline.fingerprint import config_hash
from tasks.context import PipelineRun

KeyOf = Callable[[PipelineRun, dict[str, Any]], tuple[str | None, Path | None]]


def content_cache_key(stage: str, key_of: KeyOf):
    """A ``cache_key_fn`` for ``stage``.

    Args:
        stage: stage name (part of the key).
        key_of: ``(run, task parameters) -> (content key, output that must exist)``; a None key
            means "do not cache" (e.g. a remote source whose content can change under its name).
    """

    def cache_key(context, parameters: dict[str, Any]) -> str | None:
        run = PipelineRun.load(parameters["run_file"])
        key, output = key_of(run, parameters)
        if key is None or output is None or not Path(output).exists():
            return None
        return f"opdlm-{stage}-{key}-{config_hash(run.runs_dir, length=8)}"

    return cache_key


def run_cached(task_fn, *args, **kwargs) -> tuple[Any, bool]:
    """Call a (cached) task; returns ``(result, was_cached)``. A failed task raises its error."""
    state = task_fn(*args, return_state=True, **kwargs)
    return state.result(), state.is_completed() and state.name == "Cached"
