"""Each pipeline stage as one call of the library function that does its work, driven by a recipe.

The Prefect tasks (``tasks/``) and the DVC stages (``opdlm stage ...`` in ``dvc.yaml``) both call
these, so the two orchestrators cannot drift apart:

======== ================================================ ===========================================
stage    here                                             library function
======== ================================================ ===========================================
data     :func:`data_stage`                               :func:`opdlm.data.download.download_dataset`
teacher  :func:`teacher_stage`                            ``builtin:tiny``:
                                                          :func:`opdlm.sources.builtin.builtin_teacher`
                                                          (Prefect runs its command form,
                                                          :func:`opdlm.sources.builtin.bootstrap_command`,
                                                          as a subprocess); else
                                                          :func:`opdlm.sources.resolve.resolve_model_source`
convert  :func:`convert_stage`                            :func:`opdlm.sources.convert.convert_teacher`
train    ``opdlm train --until-stage`` (a subprocess)     :func:`opdlm.train.loop.train`
student  :func:`student_stage`                            :func:`opdlm.train.checkpoint.export_model`
                                                          (the finished folder's final weights)
eval     :func:`eval_model_stage`, :func:`sweep_stage`    :func:`opdlm.eval.harness.evaluate`,
                                                          :func:`opdlm.eval.sweep.sweep`
export   :func:`engine_export_stage`                      :func:`opdlm.formats.engine.export_student`
                                                          (``registry.export_formats``)
======== ================================================ ===========================================
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from opdlm.config.recipe import Recipe
from opdlm.data.download import DatasetInfo
from opdlm.errors import OpdlmError
from opdlm.fsutil import atomic_dir, atomic_write_text, check_output_location, check_replaceable
from opdlm.sources.builtin import BUILTIN_TEACHER, builtin_teacher
from opdlm.sources.resolve import resolve_teacher, teacher_source
from opdlm.train.folder import TrainingFolder


def training_seed(recipe: Recipe) -> int:
    """The seed training uses (``train.seed``, else the recipe's)."""
    return recipe.train.seed if recipe.train.seed is not None else recipe.seed


def data_source(recipe: Recipe) -> str:
    """Where the data stage reads from: ``data.path`` when set by hand, else ``data.source``."""
    return recipe.data.path or recipe.data.source


def data_stage(recipe: Recipe, out_path: str | Path) -> DatasetInfo:
    """Fetch and validate the recipe's training prompts; publish them as normalised JSONL at ``out_path``.

    ``builtin:synthetic`` draws ``data.limit`` (else ``train.num_prompts``) rows with the training
    seed, exactly the rows ``opdlm train`` would draw by itself.
    """
    from opdlm.data.download import download_dataset

    source = data_source(recipe)
    check_output_location(out_path, {"data.source": source}, flag="--out", replaces=False)
    limit = recipe.data.limit
    if limit is None and source.startswith("builtin:"):
        limit = recipe.train.num_prompts
    return download_dataset(
        source,
        out_path,
        field_map=recipe.data.field_map or None,
        limit=limit,
        seed=training_seed(recipe),
        skills=recipe.data.skills,
    )


def teacher_stage(recipe: Recipe, out_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """A local Hugging Face directory holding the recipe's teacher.

    ``builtin:tiny`` is trained into ``out_dir`` by the bootstrap (``teacher.bootstrap`` settings),
    the same function ``opdlm teacher bootstrap`` runs. Any other source is resolved (downloaded to
    its cache when remote); with ``out_dir`` set, ``out_dir`` becomes a folder of links to the
    resolved files, so a DVC stage has a workspace output without copying the weights. An existing
    non-empty ``out_dir`` is replaced only with ``overwrite``; one that holds the resolved teacher never.
    """
    src = teacher_source(recipe)
    if out_dir is not None:  # before a download or a bootstrap
        check_output_location(out_dir, {"teacher": recipe.teacher.path}, flag="--out")
        check_replaceable(out_dir, overwrite, flag="--out")
    if src == BUILTIN_TEACHER:
        if out_dir is None:
            raise OpdlmError(
                "teacher builtin:tiny is bootstrapped into a folder: give the teacher stage an output folder"
            )
        return builtin_teacher(src, recipe.teacher, recipe.convert.enable_thinking, out_dir, overwrite=overwrite)
    resolved = resolve_teacher(recipe)
    if out_dir is None:
        return resolved
    with atomic_dir(out_dir, overwrite=overwrite, inputs={"teacher": resolved}, flag="--out") as tmp:
        for f in sorted(resolved.rglob("*")):
            if f.is_file():
                link = tmp / f.relative_to(resolved)
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f.resolve(), link)
    return Path(out_dir).absolute()


def convert_stage(recipe: Recipe, teacher_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert the teacher into the block-diffusion student the training starts from (``convert`` + ``sampler``).

    An existing non-empty ``out_dir`` is replaced only with ``overwrite``.

    With ``convert.student_source`` set, that released block-diffusion checkpoint is imported instead
    (:mod:`opdlm.formats.importer`); the teacher stays the distillation target.
    """
    from opdlm.sources.convert import convert_teacher

    return convert_teacher(
        recipe.convert.student_source or teacher_dir,
        out_dir,
        block_size=recipe.convert.block_size,
        logit_shift=recipe.convert.logit_shift,
        sampler=recipe.sampler,
        overwrite=overwrite,
        prompt_attention=recipe.convert.prompt_attention,
        enable_thinking=recipe.convert.enable_thinking,
        teacher_config=recipe.teacher,
    )


def stage_names(recipe: Recipe) -> list[str]:
    """The curriculum stages, in order (one training task each)."""
    return [s.name for s in recipe.train.stages]


def stage_steps(recipe: Recipe, stage: str) -> tuple[int, int]:
    """Global rollout steps ``[start, end)`` of curriculum stage ``stage``.

    Raises:
        OpdlmError: no stage of that name.
    """
    start = 0
    for s in recipe.train.stages:
        if s.name == stage:
            return start, start + s.rollout_steps
        start += s.rollout_steps
    raise OpdlmError(f"train.stages has no stage {stage!r}; stages: {', '.join(stage_names(recipe))}")


def student_stage(
    train_dir: str | Path,
    out_dir: str | Path,
    total_rollout_steps: int | None = None,
    plots_dir: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Publish the final weights of a finished training folder as a model directory at ``out_dir``.

    Model files only (no optimizer state), copied from the newest checkpoint (verified against its
    manifest); ``out_dir`` is published atomically, and an existing non-empty one is replaced only
    with ``overwrite``. Neither ``out_dir`` nor ``plots_dir`` may be, hold or lie inside the training
    folder. With ``plots_dir``, the run's curves (``train_curves.csv``/``.png``) and a copy of its
    summary go there too.

    Args:
        train_dir: an ``opdlm train`` output folder.
        out_dir: the student directory to write.
        total_rollout_steps: when given, the run must have trained exactly this many rollout steps.
        plots_dir: folder for the curves and the summary (None: none written).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``(checkpoint exported, the folder's summary)``.

    Raises:
        OpdlmError: the run is unfinished, the folder has no checkpoint or no metrics, or an output
            would replace something it should not (one line).
    """
    from opdlm.train.checkpoint import export_model

    inputs = {"--train-dir": train_dir}
    check_output_location(out_dir, inputs, flag="--out")
    if plots_dir is not None:
        check_output_location(plots_dir, inputs, flag="--plots", replaces=False)
    folder = TrainingFolder(train_dir)
    summary = folder.require_finished(total_rollout_steps)
    last = folder.latest_checkpoint()
    if last is None:
        raise OpdlmError(f"{folder.path} has no checkpoint")
    if plots_dir is not None and not folder.metrics_file.is_file():
        raise OpdlmError(f"{folder.path} has no {folder.metrics_file.name} to plot")
    with atomic_dir(out_dir, overwrite=overwrite, inputs=inputs, flag="--out") as tmp:
        export_model(last, tmp)
    if plots_dir is not None:
        import shutil

        from opdlm.pipeline.plots import write_training_curves

        write_training_curves(folder.metrics_file, plots_dir)
        shutil.copy2(folder.summary_file, Path(plots_dir) / folder.summary_file.name)
    return last, summary


EXPORTS_FILE = "exports.json"


def engine_export_stage(
    formats: list[str], student_dir: str | Path, out_root: str | Path, overwrite: bool = False
) -> dict[str, str]:
    """Export ``student_dir`` for every engine in ``formats`` (a recipe's ``registry.export_formats``)
    into ``OUT_ROOT/<format>/``.

    A student an engine would serve differently is not an error of the pipeline: its refusal is the
    result for that format. The results are also written to ``OUT_ROOT/exports.json``. ``OUT_ROOT``
    is published whole (atomically); an existing non-empty one is replaced only with ``overwrite``.

    Returns:
        format -> ``OUT_ROOT/<format>`` (the export folder) or ``refused: <reason>``.
    """
    from opdlm.formats.engine import Refusal, export_student

    out_root = Path(out_root).absolute()
    results: dict[str, str] = {}
    with atomic_dir(out_root, overwrite=overwrite, inputs={"--student": student_dir}, flag="--out") as tmp:
        for fmt in formats:
            try:
                export_student(student_dir, tmp / fmt, fmt)
            except Refusal as exc:
                results[fmt] = f"refused: {exc}"
                continue
            results[fmt] = str(out_root / fmt)
        atomic_write_text(tmp / EXPORTS_FILE, json.dumps(results, indent=2) + "\n")
    return results


def eval_model_stage(
    recipe: Recipe, model_dir: str | Path, out_dir: str | Path, teacher_results: dict[str, dict] | None = None
) -> dict[str, dict]:
    """Score ``model_dir`` on every benchmark of the recipe; write ``OUT/<benchmark>.json`` and its samples.

    A student decodes with the block-diffusion sampler under the recipe's ``sampler`` settings; the
    teacher decodes autoregressively. With ``teacher_results`` each student result carries the
    teacher's accuracy and the retention. The recipe's ``eval.lm_eval_tasks`` then run through
    lm-eval with the same settings (:func:`opdlm.lmeval.run.run_lm_eval`: ``OUT/lm_eval.json`` and
    ``OUT/lm_eval/``).

    Returns:
        ``{benchmark: EvalResult as a dict}``; also written to ``OUT/results.json``.
    """
    from opdlm.eval.harness import evaluate

    out_dir = Path(out_dir)
    results = {}
    for name in recipe.eval.benchmarks:
        result = evaluate(
            model_dir,
            name,
            recipe.eval,
            sampler=recipe.sampler,
            json_out=out_dir / f"{name}.json",
            teacher_result=(teacher_results or {}).get(name),
            progress=True,
            enable_thinking=recipe.convert.enable_thinking,
        )
        results[name] = result.to_dict()
    if recipe.eval.lm_eval_tasks:
        from opdlm.lmeval.run import run_lm_eval

        run_lm_eval(
            model_dir,
            recipe.eval.lm_eval_tasks,
            recipe.eval,
            recipe.sampler,
            out_dir,
            include_path=recipe.eval.lm_eval_include_path,
            enable_thinking=recipe.convert.enable_thinking,
        )
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def sweep_stage(
    recipe: Recipe, student_dir: str | Path, out_dir: str | Path, overwrite: bool = False
) -> dict[str, list[dict]]:
    """The parallelism sweep (``eval.sweep_thresholds`` x ``eval.sweep_block_sizes``) on every benchmark.

    Writes ``OUT/<benchmark>/sweep.json`` and ``OUT/<benchmark>/sweep_pareto.png`` (each folder whole
    or not at all; an existing one is replaced only with ``overwrite``).

    Returns:
        ``{benchmark: table}`` (one dict per grid point, with its Pareto flag).
    """
    from opdlm.eval.sweep import sweep

    return {
        name: sweep(
            student_dir,
            name,
            recipe.eval,
            Path(out_dir) / name,
            sampler=recipe.sampler,
            progress=True,
            enable_thinking=recipe.convert.enable_thinking,
            overwrite=overwrite,
        )
        for name in recipe.eval.benchmarks
    }


EVAL_STAGE_OUTPUTS = ("teacher", "student", "sweep", "sweep_points.json", "metrics.json")


def eval_stage(
    recipe: Recipe, student_dir: str | Path, teacher_dir: str | Path, out_dir: str | Path, overwrite: bool = False
) -> dict[str, dict[str, float | None]]:
    """The DVC eval stage: teacher, student (with retention) and the student's sweep into ``out_dir``.

    ``OUT/teacher/``, ``OUT/student/`` (:func:`eval_model_stage`), ``OUT/sweep/`` (:func:`sweep_stage`),
    ``OUT/sweep_points.json`` and ``OUT/metrics.json`` (:func:`eval_metrics`), each published whole,
    ``metrics.json`` last (it marks the evaluation complete). ``OUT`` itself is not replaced: other
    files there (DVC's ``.gitignore``) stay. Any of those names already there is replaced only with
    ``overwrite``.

    Returns:
        The metrics (what ``OUT/metrics.json`` holds).
    """
    from opdlm.pipeline.plots import draw_sweep_plots
    from opdlm.pipeline.preflight import check_eval_inputs

    check_eval_inputs(recipe)  # the student's lm-eval tasks would otherwise be checked after the teacher's decoding
    out = Path(out_dir)
    inputs = {"--student": student_dir, "--teacher": teacher_dir}
    for name in EVAL_STAGE_OUTPUTS:
        check_output_location(out / name, inputs, flag="--out")
    found = [name for name in EVAL_STAGE_OUTPUTS if (out / name).exists()]
    if found and not overwrite:
        raise OpdlmError(f"--out {out_dir} already holds {found[0]} (pass --overwrite to replace the evaluation)")
    (out / "metrics.json").unlink(missing_ok=True)  # no stale marker of completion while this one runs
    with atomic_dir(out / "teacher", overwrite=True) as tmp:
        teacher_results = eval_model_stage(recipe, teacher_dir, tmp)
    with atomic_dir(out / "student", overwrite=True) as tmp:
        student_results = eval_model_stage(recipe, student_dir, tmp, teacher_results)
    with atomic_dir(out / "sweep", overwrite=True) as tmp:
        tables = sweep_stage(recipe, student_dir, tmp)
        draw_sweep_plots(recipe, tmp, student_results, teacher_results)  # + the teacher and the shipped point
    points = [{"benchmark": b, **p} for b, table in tables.items() for p in table]
    atomic_write_text(out / "sweep_points.json", json.dumps(points, indent=2) + "\n")
    metrics = eval_metrics(student_results, teacher_results)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def eval_metrics(student: dict[str, dict], teacher: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """The headline numbers per benchmark (what DVC's ``metrics`` and MLflow's eval metrics show)."""
    out = {}
    for name, s in student.items():
        t = teacher.get(name, {})
        t_acc = t.get("accuracy")
        retention = s["accuracy"] / t_acc if t_acc else None
        out[name] = {
            "student_accuracy": s["accuracy"],
            "teacher_accuracy": t_acc,
            "retention": retention,
            "student_tokens_per_step": s["tokens_per_step"],
            "teacher_tokens_per_step": t.get("tokens_per_step"),
            "student_mean_forwards": s["mean_forwards"],
            "teacher_mean_forwards": t.get("mean_forwards"),
            "n": s["n"],
        }
        kept = s.get("teacher_retention") or {}  # the student's closeness to the teacher's completions
        out[name].update({f"student_{k}": kept.get(k) for k in RETENTION_KEYS})
    return out


# Retention numbers (opdlm.eval.retention) that go to MLflow and DVC metrics as ``student_<key>``.
RETENTION_KEYS = (
    "teacher_nll",
    "teacher_self_nll",
    "nll_ratio",
    "nll_gap",
    "agreement",
    "prefix_agreement",
    "exact_match",
    "repetition",
    "teacher_repetition",
    "length_ratio",
)


def lm_eval_metrics(teacher_dir: str | Path, student_dir: str | Path) -> dict[str, float]:
    """The lm-eval scores and speeds of an eval stage, flat for MLflow: ``lm_eval/<who>/<task>/<metric>``
    and ``lm_eval/<who>/<task>/tokens_per_step`` for who in teacher, student; ``{}`` without ``eval.lm_eval_tasks``."""
    from opdlm.lmeval.run import SUMMARY_FILE

    flat: dict[str, float] = {}
    for who, folder in (("teacher", teacher_dir), ("student", student_dir)):
        path = Path(folder) / SUMMARY_FILE
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        for task, values in summary["metrics"].items():
            flat.update({f"lm_eval/{who}/{task}/{k}": v for k, v in values.items()})
        for task, speed in summary["speed"]["tasks"].items():
            flat[f"lm_eval/{who}/{task}/tokens_per_step"] = speed["tokens_per_step"]
            flat[f"lm_eval/{who}/{task}/mean_forwards"] = speed["mean_forwards"]
    return flat
