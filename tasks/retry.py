"""When a failed task is worth retrying: failed transfers yes, mistakes in the user's input no."""

from __future__ import annotations

from opdlm.errors import OpdlmError


def is_transient(exc: BaseException) -> bool:
    """Network and storage failures are transient; a bad recipe, row or path is not (retrying cannot fix it)."""
    from opdlm.storage.s3 import StorageError

    if isinstance(exc, StorageError):
        return True
    if isinstance(exc, OpdlmError):
        return str(exc).startswith("could not download")
    return not isinstance(exc, KeyboardInterrupt | SystemExit)


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only a transient failure."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)
