"""``opdlm study``: OPD vs the masked-diffusion baseline at matched token budgets, ablations, sweep, report."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("study", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
    def study(
        recipe: Path = typer.Option(
            Path("configs/study.yaml"), "--recipe", help="Study YAML (a recipe plus a `study` section)."
        ),
        quick: bool = typer.Option(
            False, "--quick", help="Apply the file's `quick` overrides (CI size, a few minutes)."
        ),
        out: Path = typer.Option(
            None, "--out", help="Study folder (default runs/study, runs/study-quick with --quick); re-running resumes."
        ),
        teacher: str = typer.Option(
            None, "--teacher", help="Teacher directory or source (default: the recipe's teacher.source)."
        ),
        tracking_uri: str = typer.Option(
            None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else OUT/mlruns.db)."
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
        overrides: list[str] = typer.Argument(
            None, help="Dotted overrides, e.g. study.seeds=[0] recipe.eval.limit=60."
        ),
    ) -> None:
        """Train every arm of the study, evaluate each against the teacher, write the table, plots and an MLflow run."""
        import shlex

        from opdlm.study.config import load_study
        from opdlm.study.runner import PLOT_TOKENS, RESULTS_MD, run_study

        spec = load_study(recipe, overrides or [], quick=quick)
        out_dir = out or Path("runs") / ("study-quick" if quick else "study")
        parts = [
            "opdlm",
            "study",
            "--recipe",
            str(recipe),
            *(["--quick"] if quick else []),
            *(["--out", str(out)] if out else []),
            *(["--teacher", teacher] if teacher else []),
            *(overrides or []),
        ]
        command = shlex.join(parts)
        results = run_study(
            spec, out_dir, teacher=teacher, command=command, tracking_uri=tracking_uri, progress=not quiet
        )
        summary = results["summary"]
        typer.echo(
            f"study -> {Path(out_dir).absolute() / RESULTS_MD} (plots in {Path(out_dir).absolute() / 'plots'}, e.g. {PLOT_TOKENS})"
        )
        if "opd_accuracy" in summary:
            typer.echo(
                f"teacher {summary['teacher_accuracy']:.3f}; OPD {summary['opd_accuracy']:.3f} at {summary['opd_tokens']:,.0f} tokens "
                f"({summary['opd_retention'] or 0:.1%} of the teacher)"
            )
        typer.echo(summary["statement"])
        typer.echo(f"mlflow run {results['mlflow']['run_id']} at {results['mlflow']['tracking_uri']}")
