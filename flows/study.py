"""Flow ``opdlm-study``: OPD vs the masked-diffusion baseline at matched budgets, ablations, sweeps, report.

Run it with ``opdlm study --recipe configs/study.yaml [--quick] [key=value ...]`` (ephemeral Prefect
unless ``PREFECT_API_URL`` points at a server). Every arm is a task run (named by its arm id) on
Prefect's :class:`~prefect.task_runners.ProcessPoolTaskRunner`: ``study.workers`` single-threaded
processes side by side. In order:

1. The teacher (bootstrapped when builtin), the study folder and its MLflow parent run; the flow run
   is named and linked to it as a pipeline run is (:mod:`tasks.flow_run`).
2. The reference: teacher and untrained converted student on the held-out rows.
3. The OPD arms (main budgets x seeds, ablations x seeds) and the baseline's extra budgets, longest
   first; as soon as every main OPD arm is done, the baseline arms at the tokens OPD actually used.
   Each arm is logged to MLflow as a nested run when it finishes.
4. The threshold x block-size sweeps of the chosen models.
5. Table, plots, ``results.json``/``results.md``, MLflow artifacts, Prefect artifacts.

Every job writes its own result file, so a re-run with the same ``--out`` submits only what is not
done. The plan (budgets, arms, jobs) and the numbers (table, plots) are the library's
(:mod:`opdlm.study`); the jobs are :mod:`tasks.study_jobs`.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.task_runners import ProcessPoolTaskRunner

from opdlm.study import plan
from opdlm.study.arms import arm_recipe, baseline_arms, heldout_baseline_arms, heldout_opd_arms, opd_arms
from opdlm.study.config import StudyFile, load_study
from tasks.flow_run import label_flow_run, recipe_run_name
from tasks.study import describe, study_arm, study_completions, study_reference, study_sweep
from tasks.study_jobs import exclusive, finished, init_worker
from tasks.study_report import finish_study, open_study, run_file_of, study_teacher
from tasks.study_tracking import fail_study_runs, log_arm, tracking_uri_for

WAIT_SECONDS = 2.0  # how often the flow looks for finished arms (it may submit more then)


def study_out_dir(out: str | Path | None, quick: bool) -> Path:
    """The study folder: ``out``, else ``runs/study`` (``runs/study-quick`` with --quick); absolute."""
    return Path(out or Path("runs") / ("study-quick" if quick else "study")).absolute()


def task_runner(workers: int) -> ProcessPoolTaskRunner:
    """``workers`` spawned processes; each exits with the flow's process and keeps library logs quiet."""
    return ProcessPoolTaskRunner(max_workers=workers, initializer=init_worker)


@contextlib.contextmanager
def prefect_api():
    """The Prefect API the flow and its pool workers share while the block runs.

    ``PREFECT_API_URL`` when set; else a temporary local server started here and named in the
    environment, which the spawned workers inherit. (Prefect's ephemeral mode would start a
    server in the flow's process and another in every worker process: measured, ~15 s each.)
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        # logs and events are sent in the background: deliver them while the server still answers
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        server.stop()


def close_failed_study(flow, flow_run, state) -> None:
    """``on_failure`` / ``on_crashed`` hook: mark the study's open MLflow runs FAILED."""
    from tasks.context import PipelineRun

    params = flow_run.parameters or {}
    run_file = run_file_of(study_out_dir(params.get("out"), bool(params.get("quick"))))
    if not run_file.is_file():  # it failed before opening an MLflow run
        return
    run = PipelineRun.load(run_file)
    if run.flow_run_id != str(flow_run.id):  # the folder's run file is another flow run's
        return
    closed = fail_study_runs(run.tracking_uri, str(flow_run.id))
    if closed:
        print(f"marked {len(closed)} MLflow run(s) of the failed study FAILED: {', '.join(closed)}")


def run_study(
    recipe: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    quick: bool = False,
    out: str | Path | None = None,
    teacher: str | None = None,
    command: str = "",
    tracking_uri: str | None = None,
    progress: bool = True,
) -> dict:
    """Validate the study, lock its folder, run :func:`study_flow` with ``study.workers`` processes.

    The lock is taken before Prefect starts, so a second study in the same folder fails in a second
    with one line and writes nothing. Returns the content of ``results.json``.
    """
    spec = load_study(recipe, list(overrides), quick=quick)
    out_dir = study_out_dir(out, quick)
    with exclusive(out_dir), prefect_api():
        configured = study_flow.with_options(task_runner=task_runner(spec.study.workers))
        return configured(
            recipe=str(recipe),
            overrides=list(overrides),
            quick=quick,
            out=str(out_dir),
            teacher=teacher,
            command=command,
            tracking_uri=tracking_uri,
            progress=progress,
        )


@flow(
    name="opdlm-study",
    flow_run_name=recipe_run_name,
    log_prints=True,
    task_runner=task_runner(2),
    on_failure=[close_failed_study],
    on_crashed=[close_failed_study],
)
def study_flow(
    recipe: str = "configs/study.yaml",
    overrides: list[str] = [],  # noqa: B006 (Prefect shows the default)
    quick: bool = False,
    out: str | None = None,
    teacher: str | None = None,
    command: str = "",
    tracking_uri: str | None = None,
    progress: bool = True,
) -> dict:
    """The whole study for the study file ``recipe``; returns the content of ``results.json``.

    Args:
        recipe: study YAML (a recipe plus a ``study`` section).
        overrides: dotted overrides into that file, e.g. ``study.seeds=[0]``.
        quick: apply the file's ``quick`` overrides first (CI size).
        out: study folder (default ``runs/study``, ``runs/study-quick`` with ``quick``); a re-run resumes.
        teacher: teacher directory or source (default: the recipe's).
        command: the command line, recorded in the table.
        tracking_uri: MLflow tracking URI (default ``MLFLOW_TRACKING_URI``, else ``OUT/mlruns.db``).
        progress: progress bars on stderr.
    """
    spec = load_study(recipe, list(overrides), quick=quick)
    out_dir = study_out_dir(out, quick)
    with exclusive(out_dir):
        return _study(spec, out_dir, recipe, list(overrides), teacher, command, tracking_uri, progress)


class _Arms:
    """The arms in flight and done: submits what is not finished yet, logs each result as it arrives.

    Main-section jobs go to the pool at once, longest first (the workers end together). Held-out jobs
    wait in a queue and go one at a time as a worker frees up, lowest OPD budget first, so the
    section finishes budget by budget and a run cut short has whole budgets (both seeds, every arm).
    """

    def __init__(self, run, total: int, progress: bool, workers: int):
        from opdlm.progress import progress as progress_bar

        self.run, self.results, self.pending, self.queue, self.workers = run, {}, {}, [], workers
        self.side: dict = {}  # futures of other jobs (teacher completions) -> the id marked ready when done
        self.ready: set[str] = set()
        self.bar = progress_bar(total, "study arms", "arm", enabled=progress)
        self.logger = get_run_logger()

    def submit(self, jobs: list[dict]) -> None:
        for job in sorted(jobs, key=plan.cost_estimate, reverse=True):
            if (done := finished(job)) is not None:
                self._record(done, "reused")
            else:
                self.pending[study_arm.submit(job)] = job

    def enqueue(self, jobs: list[dict]) -> None:
        """Queue held-out jobs (by budget level, then in the given order) and submit as many as workers are free."""
        for job in jobs:
            if (done := finished(job)) is not None:
                self._record(done, "reused")
            else:
                self.queue.append(job)
        self.queue.sort(key=lambda j: j["tags"]["budget_level"])  # stable: keeps the given order within a level
        self._fill()

    def _fill(self) -> None:
        while self.queue and len(self.pending) < self.workers:
            job = self.queue.pop(0)
            self.pending[study_arm.submit(job)] = job

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.queue or self.side)

    def done_ids(self) -> set[str]:
        """Ids of finished arms and finished side jobs."""
        return self.results.keys() | self.ready

    def _record(self, result: dict, how: str) -> None:
        self.results[result["arm_id"]] = result
        log_arm(self.run.tracking_uri, self.run.experiment_id, self.run.parent_run_id, result, self.run.tags())
        self.bar.update(1)
        self.logger.info("%s (%s)", describe(result), how)

    def wait_some(self) -> None:
        """Block until at least one pending arm finishes; raise the first failure (pending arms are then cancelled)."""
        done = wait([*self.pending, *self.side], timeout=WAIT_SECONDS).done
        for future in done:
            if future in self.side:
                future.result()  # a failure stops the study here
                self.ready.add(self.side.pop(future))
                continue
            self.pending.pop(future)
            self._record(future.result(), "trained")
        self._fill()

    def close(self) -> None:
        self.bar.close()


def _one(task, job: dict) -> dict:
    """A single job's result: reused when done, else run in the pool."""
    done = finished(job)
    return done if done is not None else task.submit(job).result()


def _study(
    spec: StudyFile,
    out: Path,
    recipe: str,
    overrides: list[str],
    teacher: str | None,
    command: str,
    tracking_uri: str | None,
    progress: bool,
) -> dict:
    from tasks.context import PipelineRun

    started, study, spec_json = time.time(), spec.study, spec.model_dump(mode="json")
    uri = tracking_uri_for(out, tracking_uri)
    teacher_dir = Path(study_teacher(spec_json["recipe"], teacher))
    run_file = open_study(spec_json, str(out), str(teacher_dir), str(recipe), overrides, command, uri)
    run = PipelineRun.load(run_file)
    label_flow_run(run_file)

    reference = _one(study_reference, plan.reference_job(spec, out, teacher_dir))
    teacher_result = reference["teacher_result"]
    teacher_ref = {k: teacher_result[k] for k in ("benchmark", "model", "accuracy")}  # no timings: stable hashes
    planner = plan.Planner(teacher_dir, study.opd_fill_estimate, progress=progress)
    run_main, heldout = "main" in study.sections, spec.heldout if spec.runs_heldout else None
    first = opd_arms(study) if run_main else []
    extra = baseline_arms(study, {}) if run_main else []  # the extra budgets need no OPD result: they start at once
    main_opd = {a.arm_id for a in first if a.group == "main"}
    held_opd = heldout_opd_arms(heldout) if heldout else []
    total = len(first) + len(extra) + len(held_opd)
    if run_main:
        total += len(baseline_arms(study, {b: -b for b in study.budgets}))
    if heldout:
        total += len(heldout.splits) * len(heldout.budgets) * len(heldout.seeds) * len(heldout.baselines)
    # what each follow-up needs finished, and the arms it then submits (baselines at the tokens OPD used)
    followups: list[tuple[set[str], object]] = []
    if run_main:
        extra_ids = {a.arm_id for a in extra}

        def main_baselines(results: dict) -> list:
            matched = plan.matched_budgets([results[a] for a in main_opd])
            return [a for a in baseline_arms(study, matched) if a.arm_id not in extra_ids]

        followups.append((main_opd, main_baselines))
    for split in heldout.splits if heldout else []:
        for budget in heldout.budgets:
            opd_ids = {a.arm_id for a, t in held_opd if t["split"] == split.name and a.budget == budget}
            needed = set(opd_ids)
            if "teacher_greedy" in heldout.baselines:  # the teacher's completions of the split's prompts too
                needed |= {_completion_name(split.name, s) for s in heldout.seeds}

            def held_baselines(results: dict, split=split, opd_ids=opd_ids) -> list:
                matched = plan.heldout_matched([results[a] for a in opd_ids], split.name)
                return heldout_baseline_arms(heldout, split, study.baseline_overrides, matched)

            followups.append((needed, held_baselines))
    arms = _Arms(run, total, progress, study.workers)
    try:
        arms.submit(plan.arm_jobs(first + extra, spec, planner, out, teacher_dir, teacher_ref))
        arms.enqueue(plan.arm_jobs(held_opd, spec, planner, out, teacher_dir, teacher_ref))
        if heldout and "teacher_greedy" in heldout.baselines:  # in the pool, beside the OPD arms
            for name, job in _completion_jobs(spec, heldout, teacher_dir).items():
                arms.side[study_completions.submit(job)] = name
        while arms.busy or followups:
            ready = [f for f in followups if f[0] <= arms.done_ids()]
            for needed, make in ready:
                followups.remove((needed, make))
                jobs = plan.arm_jobs(make(arms.results), spec, planner, out, teacher_dir, teacher_ref)
                if jobs and "tags" in jobs[0]:
                    arms.enqueue(jobs)
                else:
                    arms.submit(jobs)
            if not ready:
                arms.wait_some()
    finally:
        arms.close()
    order = [a.arm_id for a in first]
    if run_main:
        order += [a.arm_id for a in baseline_arms(study, plan.matched_budgets([arms.results[a] for a in main_opd]))]
    arm_results = [arms.results[a] for a in order]
    held_results = [r for r in arms.results.values() if r["group"] == "heldout"]

    main_results = [r for r in arm_results if r["group"] == "main"]
    sweeps = [
        (job, finished(job) or study_sweep.submit(job))
        for job in (plan.sweep_jobs(spec, out, main_results, teacher_result["accuracy"]) if run_main else [])
    ]
    sweep_rows = [row for _, s in sweeps for row in (s if isinstance(s, dict) else s.result())["rows"]]
    meta = {
        "command": command,
        "teacher": str(teacher_dir),
        "started_at": started,
    }
    return finish_study(run_file, spec_json, reference, arm_results, sweep_rows, meta, held_results)


def _completion_name(split: str, seed: int) -> str:
    return f"{split}-s{seed}"


def _completion_jobs(spec: StudyFile, heldout, teacher_dir: Path) -> dict[str, dict]:
    """One job per (split, seed): the teacher's greedy completions of that prompt pool, made once (cached by
    content), so the baselines trained on them can be planned and their workers read the same file."""
    jobs = {}
    for split in heldout.splits:
        for arm, tags in heldout_baseline_arms(heldout, split, spec.study.baseline_overrides, {0: 1}):
            if tags["kind"] == "mdm_sft_teacher":
                name = _completion_name(split.name, arm.seed)
                recipe = arm_recipe(spec.recipe, arm).model_dump(mode="json")
                jobs[name] = {"name": name, "teacher": str(teacher_dir), "recipe": recipe, "seed": arm.seed}
    return jobs
