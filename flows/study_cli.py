"""``opdlm study``: OPD vs the masked-diffusion baseline at matched budgets, ablations, sweep, report.

Like ``opdlm pipeline`` (:mod:`flows.cli`), this command lives above the library and joins the
``opdlm`` CLI through the ``opdlm.commands`` entry point in pyproject.toml. The study file and the
overrides are validated first, so a typo fails in a second with one line, before Prefect starts;
the study then runs as the Prefect flow ``opdlm-study`` (:mod:`flows.study`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def command_line(recipe: Path, quick: bool, out: Path | None, teacher: str | None, overrides: list[str]) -> str:
    """The command as a user would type it again (recorded in the table)."""
    import shlex

    parts = [
        "opdlm",
        "study",
        "--recipe",
        str(recipe),
        *(["--quick"] if quick else []),
        *(["--out", str(out)] if out else []),
        *(["--teacher", teacher] if teacher else []),
        *overrides,
    ]
    return shlex.join(parts)


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
        """Train every arm of the study as a Prefect flow, evaluate each against the teacher, write the table,
        plots and an MLflow run."""
        import os

        from flows.cli import ENV_DEFAULTS, QUIET_BARS
        from opdlm.study.config import load_study
        from opdlm.study.plan import PLOT_FLOPS, PLOT_TOKENS, RESULTS_MD

        overrides = list(overrides or [])
        from opdlm.config.base import is_local_source
        from opdlm.pipeline.preflight import check_eval_inputs, check_prefect_server, check_tracking_server

        spec = load_study(recipe, overrides, quick=quick)  # fail fast, before Prefect starts
        check_eval_inputs(spec.recipe)
        if teacher and is_local_source(teacher):  # a builtin: one is trained in the flow; a local one must exist now
            from opdlm.models.model_dir import check_model_dir

            check_model_dir(Path(teacher).expanduser(), "teacher (--teacher)")
        check_tracking_server(tracking_uri)
        check_prefect_server()
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if quiet or not sys.stderr.isatty():
            for key, value in QUIET_BARS.items():
                os.environ.setdefault(key, value)
        from flows.study import run_study, study_out_dir

        results = run_study(
            recipe,
            overrides,
            quick=quick,
            out=out,
            teacher=teacher,
            command=command_line(recipe, quick, out, teacher, overrides),
            tracking_uri=tracking_uri,
            progress=not quiet,
        )
        out_dir = study_out_dir(out, quick)
        summary = results["summary"]
        typer.echo(f"study -> {out_dir / RESULTS_MD} (plots in {out_dir / 'plots'}, e.g. {PLOT_TOKENS}, {PLOT_FLOPS})")
        if "opd_accuracy" in summary:
            typer.echo(
                f"teacher {summary['teacher_accuracy']:.3f}; OPD {summary['opd_accuracy']:.3f} at "
                f"{summary['opd_tokens']:,.0f} tokens "
                f"({summary['opd_retention'] or 0:.1%} of the teacher)"
            )
        if "main" in load_study(recipe, overrides, quick=quick).study.sections:
            typer.echo(summary["statement"])
        if summary.get("flops_statement"):
            typer.echo(summary["flops_statement"])
        if summary.get("heldout_statement"):
            typer.echo(f"held-out skills: {summary['heldout_statement']}")
        typer.echo(f"mlflow run {results['mlflow']['run_id']} at {results['mlflow']['tracking_uri']}")
