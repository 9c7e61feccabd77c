"""The study's units of work, each a plain function of a JSON-able job that writes its own result file.

* :func:`run_reference`: the teacher and the untrained converted student on the held-out harness;
* :func:`run_arm`: train one arm, evaluate it with the teacher as reference;
* :func:`run_sweep`: one trained model under every (threshold, block size) of the sweep grid.

Each writes ``result.json`` atomically as its last act and returns it; when that file already holds
the same job (by fingerprint), the work is skipped, so an interrupted study resumes where it stopped.
The study flow's tasks (:mod:`tasks.study`) run them in Prefect's process pool, so they take paths
and return dicts, never models or tensors. :func:`init_worker` prepares each pool process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

from opdlm.errors import OpdlmError
from opdlm.fsutil import atomic_write_text
from opdlm.study.table import flops_fields
from opdlm.train.folder import TrainingFolder

RESULT_FILE = "result.json"
LOCK_NAME = ".study.lock"
BENCHMARK = "synthetic"


NOT_IDENTITY = ("prune",)  # job keys that change what is kept on disk, not the result


def job_fingerprint(job: dict) -> str:
    """A hash of everything that determines a job's result (its JSON, keys sorted)."""
    identity = {k: v for k, v in job.items() if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_result(folder: Path, fingerprint: str) -> dict | None:
    """The finished result in ``folder`` when it was produced by the same job; None when there is none.

    Raises:
        OpdlmError: the folder holds the result of a different job (another config wrote this study folder).
    """
    path = folder / RESULT_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("fingerprint") != fingerprint:
        raise OpdlmError(
            f"{folder} holds a result of a different study configuration (fingerprint {result.get('fingerprint')} != "
            f"{fingerprint}); use a new --out, or delete that folder to redo it"
        )
    return result


def finished(job: dict) -> dict | None:
    """The job's result when an earlier run already wrote it (see :func:`cached_result`)."""
    return cached_result(Path(job["folder"]), job_fingerprint(job))


def _write_result(folder: Path, result: dict) -> dict:
    atomic_write_text(folder / RESULT_FILE, json.dumps(result, indent=1, default=str) + "\n")
    return result


_HELD: dict[Path, object] = {}  # study folders this process holds the lock of (re-entry is no second lock)


@contextlib.contextmanager
def exclusive(out: Path):
    """Hold an exclusive lock on study folder ``out`` (created) while the block runs.

    Two studies in one folder would train the same arm into the same directory at once (measured:
    the second run then reused an arm folder the first had half-written). Re-entering in the same
    process (the CLI holds it, then the flow takes it) holds the one lock.

    Raises:
        OpdlmError: another process holds the lock (one line naming the folder).
    """
    import fcntl

    out = Path(out).absolute()
    if out in _HELD:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OpdlmError(
                f"another study is running in {out} (it holds {out / LOCK_NAME}); wait for it or pass --out DIR"
            ) from None
        _HELD[out] = handle
        try:
            yield
        finally:
            del _HELD[out]


def quiet_libraries() -> None:
    """Silence per-load progress bars and info logs of transformers (many models load in a study)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


PARENT_CHECK_SECONDS = 1.0


def exit_with_parent(parent_pid: int, interval: float = PARENT_CHECK_SECONDS) -> threading.Thread:
    """Start a daemon thread that ends this process as soon as ``parent_pid`` is no longer its parent.

    A pool worker whose parent died blocks forever on its task queue; a reparented process
    (``getppid`` changes) is the portable sign that the parent is gone. Workers never outlive the
    study, however it was killed (SIGTERM, SIGKILL).
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def init_worker() -> None:
    """The study's process-pool initializer: exit with the process that started the pool (the flow's;
    read here, in the worker, so a flow run in any process gets it right), quiet library logs."""
    exit_with_parent(os.getppid())
    quiet_libraries()


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def _eval_fields(result) -> dict:
    """The :class:`~opdlm.eval.metrics.EvalResult` fields a study row carries."""
    return {
        "accuracy": result.accuracy,
        "tokens_per_step": result.tokens_per_step,
        "mean_forwards": result.mean_forwards,
        "mean_length": result.mean_length,
        "finished_rate": result.finished_rate,
        "n_eval": result.n,
        "eval_seconds": result.generation_s,
        "per_skill": result.per_skill,
    }


def run_reference(job: dict) -> dict:
    """Score the teacher and the untrained converted student (same rows, same sampler as every arm).

    Job keys: ``folder``, ``teacher``, ``recipe`` (a Recipe as JSON).
    """
    from opdlm.config.recipe import Recipe
    from opdlm.eval.harness import evaluate
    from opdlm.pipeline.stages import convert_stage

    folder, fingerprint = Path(job["folder"]), job_fingerprint(job)
    if (done := cached_result(folder, fingerprint)) is not None:
        return done
    quiet_libraries()
    recipe = Recipe.model_validate(job["recipe"])
    _threads(recipe.train.num_threads)
    thinking = recipe.convert.enable_thinking
    teacher = evaluate(
        job["teacher"],
        BENCHMARK,
        recipe.eval,
        sampler=recipe.sampler,
        json_out=folder / "teacher.json",
        enable_thinking=thinking,
    )
    converted = folder / "converted"
    if not (converted / "config.json").is_file():
        convert_stage(recipe, job["teacher"], converted)  # the pipeline's convert stage: one home for its settings
    untrained = evaluate(
        converted,
        BENCHMARK,
        recipe.eval,
        sampler=recipe.sampler,
        json_out=folder / "untrained.json",
        teacher_result=teacher,
        enable_thinking=thinking,
    )
    result = {
        "fingerprint": fingerprint,
        "teacher": job["teacher"],
        "teacher_result": teacher.to_dict(),
        "untrained": _eval_fields(untrained) | {"retention": untrained.retention, "eval_sampler": untrained.sampler},
    }
    return _write_result(folder, result)


def _final_loss(metrics_path: Path, last: int = 3) -> float | None:
    """Mean loss of the last ``last`` rollout steps that had a loss (a smoothed end-of-training loss)."""
    if not metrics_path.is_file():
        return None
    losses = [row["loss"] for row in map(json.loads, metrics_path.read_text().splitlines()) if "loss" in row]
    return round(sum(losses[-last:]) / len(losses[-last:]), 5) if losses else None


def run_arm(job: dict) -> dict:
    """Train one arm and score it on the held-out harness with the teacher as reference.

    Job keys: ``folder``, ``teacher``, ``recipe`` (the arm's Recipe as JSON), ``arm`` (Arm.to_dict()),
    ``rollout_steps``, ``planned_tokens``, ``teacher_result``, ``prune`` (delete checkpoints after), and
    optionally ``tags`` (copied into the result).
    """
    from opdlm.config.recipe import Recipe
    from opdlm.eval.harness import evaluate
    from opdlm.train.loop import train

    folder, fingerprint = Path(job["folder"]), job_fingerprint(job)
    if (done := cached_result(folder, fingerprint)) is not None:
        return done
    quiet_libraries()
    recipe = Recipe.model_validate(job["recipe"])
    start = time.perf_counter()
    model_dir = train(recipe, folder / "train", teacher=job["teacher"], console=False)
    train_seconds = time.perf_counter() - start
    _threads(recipe.train.num_threads)
    run = TrainingFolder(model_dir)
    summary = run.summary()
    if not run.is_finished():
        raise OpdlmError(
            f"arm {job['arm']['arm_id']}: training stopped at step {summary.get('rollout_step')} of "
            f"{summary.get('total_rollout_steps')}"
        )
    evaluated = evaluate(
        model_dir,
        BENCHMARK,
        recipe.eval,
        sampler=recipe.sampler,
        json_out=folder / "eval.json",
        teacher_result=job["teacher_result"],
        enable_thinking=recipe.convert.enable_thinking,
    )
    result = {
        "fingerprint": fingerprint,
        **job["arm"],
        **job.get("tags", {}),  # a held-out arm's kind, split, skills and budget level
        "rollout_steps": job["rollout_steps"],
        "planned_tokens": round(job["planned_tokens"]),
        "training_tokens": summary["cumulative_train_tokens"],
        **flops_fields(summary.get("flops")),  # total and its rollout / teacher / student parts
        "skipped_rollouts": summary["skipped_rollouts"],
        **_eval_fields(evaluated),
        "teacher_accuracy": evaluated.teacher_accuracy,
        "retention": evaluated.retention,
        "final_loss": _final_loss(run.metrics_file),
        "train_seconds": round(train_seconds, 1),
        "eval_sampler": evaluated.sampler,
        "model_dir": str(model_dir),
    }
    if job.get("prune"):  # the exported model in train/ stays; resumable state is no longer needed
        shutil.rmtree(run.checkpoints, ignore_errors=True)
        shutil.rmtree(run.converted, ignore_errors=True)
    return _write_result(folder, result)


def run_sweep(job: dict) -> dict:
    """Decode the held-out rows with one model under every (block size, threshold) of ``recipe.eval``'s grid.

    Every setting commits at least one token per step (``denoise_steps_per_block = block_size``), so
    tokens per step above 1 come from the confidence threshold alone, at every block size.

    Job keys: ``folder``, ``model_dir``, ``recipe`` (its ``eval`` and ``sampler``), ``teacher_accuracy``,
    ``meta`` (fields copied into every row: objective, training_tokens, seed, ...).
    """
    from opdlm.config.recipe import Recipe
    from opdlm.eval.sweep import sweep

    folder, fingerprint = Path(job["folder"]), job_fingerprint(job)
    if (done := cached_result(folder, fingerprint)) is not None:
        return done
    quiet_libraries()
    recipe = Recipe.model_validate(job["recipe"])
    _threads(recipe.train.num_threads)
    teacher_acc = job["teacher_accuracy"]
    rows = []
    for block_size in recipe.eval.sweep_block_sizes:
        config = recipe.eval.model_copy(update={"sweep_block_sizes": [block_size]})
        base = recipe.sampler.with_overrides(block_size=block_size, denoise_steps_per_block=block_size)
        target = folder / f"B{block_size}"  # the job's own folder: a retried job replaces it
        for point in sweep(job["model_dir"], BENCHMARK, config, target, sampler=base, overwrite=True):
            rows.append(
                {
                    **job["meta"],
                    "threshold": point["threshold"],
                    "block_size": point["block_size"],
                    "accuracy": point["accuracy"],
                    "tokens_per_step": point["tokens_per_step"],
                    "mean_forwards": point["mean_forwards"],
                    "mean_length": point["mean_length"],
                    "n_eval": point["n"],
                    "teacher_accuracy": teacher_acc,
                    "retention": round(point["accuracy"] / teacher_acc, 6) if teacher_acc else None,
                }
            )
    return _write_result(folder, {"fingerprint": fingerprint, "rows": rows})


def run_completions(job: dict) -> dict:
    """Generate (or find cached) the teacher's greedy completions of one arm's prompt pool.

    Job keys: ``teacher``, ``recipe`` (an arm's Recipe as JSON, ``data.responses: teacher_greedy``), ``seed``.
    The file lands in the content-keyed cache (:mod:`opdlm.eval.completions`), where the flow's planner
    and the arms that train on it find it; returns ``{"rows": n}``.
    """
    from opdlm.config.recipe import Recipe
    from opdlm.train.data import recipe_training_rows

    quiet_libraries()
    recipe = Recipe.model_validate(job["recipe"])
    _threads(recipe.train.num_threads)
    rows = recipe_training_rows(recipe, job["seed"], teacher_dir=job["teacher"], progress=False)
    return {"rows": len(rows)}
