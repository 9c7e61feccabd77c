"""Prefect cache keys computed from content (config hashes, dataset md5, model fingerprints).

Prefect's default policy hashes task inputs, which for a path means the path string, not the file
behind it. A stage's key here is its content key from :mod:`opdlm.pipeline.keys`, namespaced by the
runs folder; :func:`run_cached` checks that a cached result's output still exists, and rebuilds it
otherwise, so a cache never hands out a path to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from opdlm.pipeline.fingerprint import config_hash
from tasks.context import PipelineRun

KeyOf = Callable[[PipelineRun, dict[str, Any]], str | None]


def content_cache_key(stage: str, key_of: KeyOf):
    """A ``cache_key_fn`` for ``stage``.

    Args:
        stage: stage name (part of the key).
        key_of: ``(run, task parameters) -> content key``; None means "do not cache" (e.g. a remote
            source whose content can change under its name).
    """

    def cache_key(context, parameters: dict[str, Any]) -> str | None:
        run = PipelineRun.load(parameters["run_file"])
        key = key_of(run, parameters)
        return None if key is None else f"opdlm-{stage}-{key}-{config_hash(run.runs_dir, length=8)}"

    return cache_key


def run_cached(task_fn, *args, output: Callable[[Any], str | Path], **kwargs) -> tuple[Any, bool]:
    """Call a cached task; returns ``(result, was_cached)``. A failed task raises its error.

    Args:
        output: the file or folder a result points at. A cached result whose output has since been
            deleted is not trusted: the task runs again with ``refresh_cache`` and replaces the record.
    """
    state = task_fn(*args, return_state=True, **kwargs)
    result = state.result()
    if state.name != "Cached":
        return result, False
    if Path(output(result)).exists():
        return result, True
    return task_fn.with_options(refresh_cache=True)(*args, **kwargs), False
