"""``opdlm train``: on-policy distillation (or the mdm_sft baseline) from a recipe; resumes on re-run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
    def train(
        config: Path = typer.Option(
            ..., "--config", help="Recipe YAML (configs/tiny.yaml, configs/qwen3-4b.yaml, ...)."
        ),
        out: Path = typer.Option(
            ..., "--out", help="Output folder; re-running on it resumes from the last checkpoint."
        ),
        teacher: str = typer.Option(
            None, "--teacher", help="Teacher source (overrides teacher.path / teacher.source)."
        ),
        student: Path = typer.Option(
            None, "--student", help="Converted student to start from (default: convert the teacher into OUT/converted)."
        ),
        data: Path = typer.Option(None, "--data", help="JSONL of training rows (overrides data.path / data.source)."),
        until_stage: str = typer.Option(
            None,
            "--until-stage",
            help="Stop after this curriculum stage (checkpointed, exported to OUT); re-run with the next to continue.",
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No per-step progress lines."),
        overrides: list[str] = typer.Argument(
            None, help="Dotted overrides, e.g. train.lr=2e-5 train.stages.0.rollout_steps=10."
        ),
    ) -> None:
        """Train a block-diffusion student; OUT becomes a converted model directory plus checkpoints and metrics."""
        from opdlm.config.recipe import load_recipe
        from opdlm.train.loop import train as run_training

        recipe = load_recipe(config, overrides or [])
        try:
            path = run_training(
                recipe,
                out,
                teacher=teacher,
                student=str(student) if student else None,
                data=str(data) if data else None,
                until_stage=until_stage,
                console=not quiet,
            )
        except KeyboardInterrupt:
            from opdlm.errors import Interrupted

            raise Interrupted(where_stopped(out, recipe.train.total_rollout_steps)) from None
        typer.echo(f"trained student -> {path}")


def where_stopped(out: Path, total_steps: int) -> str:
    """One line for an interrupted run: its newest checkpoint and that the same command resumes from it."""
    from opdlm.errors import OpdlmError
    from opdlm.train.checkpoint import read_train_state
    from opdlm.train.folder import TrainingFolder

    try:
        last = TrainingFolder(out).latest_checkpoint()
    except OpdlmError as exc:  # a checkpoint being written when the signal came is never renamed into place
        return f"{exc}"
    if last is None:
        return f"stopped before the first checkpoint in {out}; run the same command to start again"
    step = read_train_state(last).get("rollout_step")
    return (
        f"stopped after checkpoint {last.name} (rollout step {step} of {total_steps}) in {out}; "
        "run the same command to resume"
    )
