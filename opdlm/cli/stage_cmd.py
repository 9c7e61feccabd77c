"""``opdlm stage ...``: the pipeline's stages one at a time from a recipe (what ``dvc.yaml`` runs).

Each command calls the same function in :mod:`opdlm.pipeline.stages` that the Prefect task of that
stage calls, with the same recipe, so DVC and Prefect cannot drift apart. Training is ``opdlm
train`` itself; ``opdlm stage export`` then takes the final weights and curves out of its folder and
``opdlm stage engines`` exports them for the serving engines.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _recipe(path: Path, overrides: list[str] | None):
    from opdlm.config.recipe import load_recipe

    return load_recipe(path, overrides or [])


def register(app: typer.Typer) -> None:
    stage_app = typer.Typer(
        help="Run one pipeline stage from a recipe (the commands dvc.yaml calls).", no_args_is_help=True
    )
    recipe_opt = typer.Option(..., "--recipe", help="Recipe YAML.")
    overrides_arg = typer.Argument(None, help="Dotted recipe overrides.")

    @stage_app.command("data")
    def data(
        recipe: Path = recipe_opt,
        out: Path = typer.Option(..., "--out", help="Output JSONL."),
        overrides: list[str] = overrides_arg,
    ) -> None:
        """Fetch, validate and publish the training prompts as normalised JSONL (+ OUT.info.json)."""
        from opdlm.pipeline.stages import data_stage

        info = data_stage(_recipe(recipe, overrides), out)
        typer.echo(f"data: {info.n_rows} rows from {info.source} -> {info.path} (md5 {info.md5})")

    @stage_app.command("teacher")
    def teacher(
        recipe: Path = recipe_opt,
        out: Path = typer.Option(..., "--out", help="Output teacher directory."),
        overrides: list[str] = overrides_arg,
    ) -> None:
        """builtin:tiny: bootstrap it (as `opdlm teacher bootstrap`) into OUT; other sources: resolve and link into
        OUT."""
        from opdlm.pipeline.stages import teacher_stage
        from opdlm.sources.resolve import teacher_source

        r = _recipe(recipe, overrides)
        typer.echo(f"teacher: {teacher_source(r)} -> {teacher_stage(r, out)}")

    @stage_app.command("convert")
    def convert(
        recipe: Path = recipe_opt,
        teacher: Path = typer.Option(..., "--teacher", help="Teacher directory."),
        out: Path = typer.Option(..., "--out", help="Output student directory."),
        overrides: list[str] = overrides_arg,
    ) -> None:
        """Convert the teacher with the recipe's convert and sampler sections."""
        from opdlm.pipeline.stages import convert_stage

        typer.echo(f"converted {teacher} -> {convert_stage(_recipe(recipe, overrides), teacher, out)}")

    @stage_app.command("export")
    def export(
        train_dir: Path = typer.Option(..., "--train-dir", help="An `opdlm train` output folder."),
        out: Path = typer.Option(..., "--out", help="Output model directory (model files only)."),
        plots: Path = typer.Option(..., "--plots", help="Folder for train_curves.csv/.png and train_summary.json."),
    ) -> None:
        """Copy the finished run's final weights out of the training folder (no optimizer state) and plot its curves."""
        from opdlm.pipeline.stages import student_stage

        last, _ = student_stage(train_dir, out, plots_dir=plots)
        typer.echo(f"student -> {out} (from {last.name}); curves and summary -> {plots}")

    @stage_app.command("engines")
    def engines(
        recipe: Path = recipe_opt,
        student: Path = typer.Option(..., "--student", help="Student directory."),
        out: Path = typer.Option(..., "--out", help="Output folder: one subfolder per exported engine."),
        overrides: list[str] = overrides_arg,
    ) -> None:
        """Serving-engine exports of registry.export_formats (SGLang, LMDeploy); refusals in OUT/exports.json."""
        from opdlm.pipeline.stages import engine_export_stage

        for fmt, result in engine_export_stage(
            _recipe(recipe, overrides).registry.export_formats, student, out
        ).items():
            typer.echo(f"{fmt}: {result}")

    @stage_app.command("eval")
    def eval_(
        recipe: Path = recipe_opt,
        student: Path = typer.Option(..., "--student", help="Student directory."),
        teacher: Path = typer.Option(..., "--teacher", help="Teacher directory."),
        out: Path = typer.Option(..., "--out", help="Output folder."),
        overrides: list[str] = overrides_arg,
    ) -> None:
        """Teacher, student (with retention) and the student's sweep on the recipe's benchmarks; OUT/metrics.json."""
        import json

        from opdlm.fsutil import atomic_write_text
        from opdlm.pipeline.plots import draw_sweep_plots
        from opdlm.pipeline.preflight import check_eval_inputs
        from opdlm.pipeline.stages import eval_metrics, eval_model_stage, sweep_stage

        r = _recipe(recipe, overrides)
        check_eval_inputs(r)  # the student's lm-eval tasks would otherwise be checked after the teacher's decoding
        teacher_results = eval_model_stage(r, teacher, out / "teacher")
        student_results = eval_model_stage(r, student, out / "student", teacher_results)
        tables = sweep_stage(r, student, out / "sweep")
        draw_sweep_plots(r, out / "sweep", student_results, teacher_results)  # + teacher and shipped point
        points = [{"benchmark": b, **p} for b, table in tables.items() for p in table]
        atomic_write_text(out / "sweep_points.json", json.dumps(points, indent=2) + "\n")
        metrics = eval_metrics(student_results, teacher_results)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        for bench, m in metrics.items():
            typer.echo(
                f"{bench}: student {m['student_accuracy']:.4f}, teacher {m['teacher_accuracy']:.4f}, "
                f"{m['student_tokens_per_step']:.2f} tokens/step"
            )

    app.add_typer(stage_app, name="stage")
