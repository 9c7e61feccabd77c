"""Run study jobs one by one or in a few worker processes, with a progress bar.

Tiny models gain little from several CPU threads per process, so the study runs ``workers``
single-threaded processes side by side (spawned, so no torch state is forked). The first failing
job cancels the ones not yet started and its error is raised; finished jobs keep their result files,
so a re-run picks up from there.
"""

from __future__ import annotations

from collections.abc import Callable

from opdlm.study.jobs import finished, quiet_libraries


def _describe(result: dict) -> str:
    if "arm_id" in result:
        return (
            f"{result['arm_id']}: accuracy {result['accuracy']:.3f} with {result['training_tokens']:,} tokens "
            f"in {result['rollout_steps']} steps ({result['train_seconds']:.0f} s)"
        )
    return ""


def run_jobs(fn: Callable[[dict], dict], jobs: list[dict], workers: int, desc: str, progress: bool = True) -> list[dict]:
    """``[fn(job) for job in jobs]`` on up to ``workers`` processes, results in job order; finished jobs are not re-run."""
    from tqdm.auto import tqdm

    if not jobs:
        return []
    results: list[dict | None] = [finished(job) for job in jobs]  # done by an earlier run: no process needed
    todo = [i for i, r in enumerate(results) if r is None]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="job", disable=not progress)
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

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=quiet_libraries) as pool:
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
