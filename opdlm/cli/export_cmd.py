"""``opdlm export``: a student as a directory SGLang or LMDeploy serves (SDAR format)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: str = typer.Option(
            ..., "--model", help="Converted student: a local directory, hf://ORG/MODEL or s3://..."
        ),
        fmt: str = typer.Option(..., "--format", help="Serving engine: sglang or lmdeploy."),
        out: Path = typer.Option(..., "--out", help="Output directory (must not exist)."),
        steps_per_block: int = typer.Option(
            None, "--steps-per-block", help="Serve with this many denoising steps per block."
        ),
        remasking: str = typer.Option(None, "--remasking", help="Serve with static or dynamic remasking."),
        threshold: float = typer.Option(None, "--threshold", help="Serve with this confidence threshold."),
        temperature: float = typer.Option(None, "--temperature", help="Serve with this temperature (0 = greedy)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    ) -> None:
        """Export a student for SGLang or LMDeploy: config, weights, tokenizer, engine settings, README."""
        from pydantic import ValidationError

        from opdlm.errors import ConfigError
        from opdlm.formats.engine import export_student
        from opdlm.sources.resolve import resolve_model_source

        overrides = {
            "denoise_steps_per_block": steps_per_block,
            "remasking": remasking,
            "threshold": threshold,
            "temperature": temperature,
        }
        try:
            student = resolve_model_source(model, "student")
            path, notes = export_student(student, out, fmt, overrides, overwrite=overwrite, source=model)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"sampler: {'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}") from None
        for line in notes:
            typer.echo(f"note: {line}")
        summary = (path / "README.md").read_text().split("```bash\n", 1)[1].split("\n```", 1)[0]
        typer.echo(f"exported {model} -> {path} ({fmt}); serve it with:\n  {summary}")
