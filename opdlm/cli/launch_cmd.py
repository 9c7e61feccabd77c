"""``opdlm launch``: run ``opdlm train`` under the launcher the recipe's ``resources`` asks for.

What a SLURM or Kubernetes job script calls on every node: it builds the ``torchrun``/``deepspeed``
command with :func:`opdlm.train.launch.training_command`, the environment with
:func:`~opdlm.train.launch.training_env`, and execs it (so the scheduler's signals reach the
launcher directly). ``--dry-run`` prints the command instead. The ranks log nothing to MLflow:
``opdlm track`` replays the shared training folder into a run once the job has ended.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("launch")
    def launch(
        config: Path = typer.Option(..., "--config", help="Recipe YAML; its `resources` section picks the launcher."),
        out: Path = typer.Option(..., "--out", help="Training output folder (shared by all nodes)."),
        teacher: str = typer.Option(None, "--teacher", help="Teacher source, passed to `opdlm train`."),
        student: Path = typer.Option(None, "--student", help="Converted student, passed to `opdlm train`."),
        data: Path = typer.Option(None, "--data", help="Training JSONL, passed to `opdlm train`."),
        until_stage: str = typer.Option(None, "--until-stage", help="Stop after this curriculum stage."),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the command (shell-quoted) instead of running it."
        ),
        overrides: list[str] = typer.Argument(None, help="Dotted recipe overrides, also passed to every rank."),
    ) -> None:
        """Start training with torchrun / deepspeed / python as `resources` says (run once per node)."""
        import os
        import shlex

        from opdlm.config.recipe import load_recipe
        from opdlm.train.launch import training_command, training_env

        overrides = overrides or []
        recipe = load_recipe(config, overrides)
        argv = training_command(
            config,
            out,
            resources=recipe.resources,
            overrides=overrides,
            teacher=teacher,
            student=student,
            data=data,
            until_stage=until_stage,
            deepspeed_config=recipe.train.deepspeed,
        )
        if dry_run:
            typer.echo(shlex.join(argv))
            return
        env = training_env(os.environ, resources=recipe.resources)
        os.execve(argv[0], argv, env)
