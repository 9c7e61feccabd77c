"""Run study jobs one by one or in a few worker processes, with a progress bar.

Tiny models gain little from several CPU threads per process, so the study runs ``workers``
single-threaded processes side by side (spawned, so no torch state is forked). The first failing
job cancels the ones not yet started and its error is raised; finished jobs keep their result files,
so a re-run picks up from there. Workers never outlive the study: each exits within a second of its
parent process going away, however it was killed (SIGTERM, SIGKILL).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from opdlm.study.jobs import finished, quiet_libraries

PARENT_CHECK_SECONDS = 1.0


def exit_with_parent(parent_pid: int, interval: float = PARENT_CHECK_SECONDS) -> threading.Thread:
    """Start a daemon thread that ends this process as soon as ``parent_pid`` is no longer its parent.

    A spawned worker whose parent died blocks forever on its task queue; a reparented process
    (``getppid`` changes) is the portable sign that the parent is gone.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _init_worker(parent_pid: int) -> None:
    exit_with_parent(parent_pid)
    quiet_libraries()


def _describe(result: dict) -> str:
    if "arm_id" in result:
        return (
            f"{result['arm_id']}: accuracy {result['accuracy']:.3f} with {result['training_tokens']:,} tokens "
            f"in {result['rollout_steps']} steps ({result['train_seconds']:.0f} s)"
        )
    return ""


def run_jobs(
    fn: Callable[[dict], dict], jobs: list[dict], workers: int, desc: str, progress: bool = True
) -> list[dict]:
    """``[fn(job) for job in jobs]`` on up to ``workers`` processes, results in job order; finished jobs are not re-run."""
    from opdlm.progress import progress as progress_bar

    if not jobs:
        return []
    results: list[dict | None] = [finished(job) for job in jobs]  # done by an earlier run: no process needed
    todo = [i for i, r in enumerate(results) if r is None]
    bar = progress_bar(len(jobs), desc, "job", initial=len(jobs) - len(todo), enabled=progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for i in todo:
                results[i] = fn(jobs[i])
                _report(bar, results[i], progress)
        else:
            _run_pool(fn, jobs, todo, min(workers, len(todo)), results, bar, progress)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _report(bar, result: dict, progress: bool) -> None:
    bar.update(1)
    line = _describe(result)
    if line and progress:
        bar.write(line)


def _run_pool(fn, jobs: list[dict], todo: list[int], workers: int, results: list, bar, progress: bool) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
    ) as pool:
        futures = {pool.submit(fn, jobs[i]): i for i in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                results[futures[future]] = future.result()
                _report(bar, results[futures[future]], progress)
