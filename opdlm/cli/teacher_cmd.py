"""``opdlm teacher bootstrap``: train the tiny Qwen3 teacher from scratch on the synthetic suite."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    teacher_app = typer.Typer(help="Build the autoregressive teacher.", no_args_is_help=True)

    @teacher_app.command("bootstrap")
    def bootstrap(
        out: Path = typer.Option(..., "--out", help="Output model directory (must not exist or be empty)."),
        overrides: list[str] = typer.Argument(
            None, help="key=value overrides of BootstrapConfig, e.g. steps=500 hidden_size=96."
        ),
        seconds: float = typer.Option(
            None,
            "--seconds",
            help=(
                "Optional wall-clock budget in seconds (max_seconds; default none: a fixed step schedule, the same "
                "teacher on any machine)."
            ),
        ),
        seed: int = typer.Option(None, "--seed", help="Seed of data, initialisation and batch order."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
        enable_thinking: bool = typer.Option(
            False,
            "--enable-thinking/--no-enable-thinking",
            help="Chat template thinking mode (a recipe's convert.enable_thinking).",
        ),
    ) -> None:
        """Train a Qwen3-architecture teacher on the synthetic suite; writes an ordinary HF model directory."""
        from opdlm.config.base import apply_overrides, validate_config
        from opdlm.config.teacher import BootstrapConfig

        options = {k: v for k, v in {"max_seconds": seconds, "seed": seed}.items() if v is not None}
        config = validate_config(
            BootstrapConfig, apply_overrides(options, list(overrides or [])), source="teacher bootstrap"
        )

        from opdlm.teacher.bootstrap import bootstrap_teacher

        metrics = bootstrap_teacher(out, config, overwrite=overwrite, enable_thinking=enable_thinking)
        accuracy = metrics.get("heldout_accuracy")
        shown = "not measured" if accuracy is None else f"{accuracy:.3f} on {metrics['n_eval']} held-out rows"
        typer.echo(
            f"teacher -> {Path(out).absolute()} ({metrics['parameters']:,} parameters, "
            f"{metrics['steps_done']} steps in {metrics['train_seconds']:.0f} s, accuracy {shown})"
        )

    app.add_typer(teacher_app, name="teacher")
