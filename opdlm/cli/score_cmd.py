"""``opdlm score``: score completions produced elsewhere by a benchmark's rules (no model needed)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        benchmark: str = typer.Option(..., "--benchmark", help="Benchmark name (its rows give the answers and tests)."),
        completions: Path = typer.Option(
            ..., "--completions", help="JSONL: one object per line with the task id and the completion text."
        ),
        json_out: Path = typer.Option(
            None, "--json-out", help="Write the summary JSON here and per-sample JSONL next to it."
        ),
        data_dir: Path = typer.Option(None, "--data-dir", help="Folder of benchmark files in their public formats."),
        seed: int = typer.Option(
            0, "--seed", help="Seed the benchmark was loaded with (GPQA option order, synthetic sample)."
        ),
        code_timeout_s: float = typer.Option(None, "--code-timeout", help="Wall-clock seconds per code test program."),
        code_workers: int = typer.Option(None, "--code-workers", help="Code test programs run at once."),
        allow_unsandboxed: bool = typer.Option(
            False, "--allow-unsandboxed", help="Run code tests without bubblewrap (unsafe)."
        ),
    ) -> None:
        """Score a completions file: accuracy over the listed tasks, per-sample verdicts."""
        from opdlm.config.base import validate_config
        from opdlm.config.eval import EvalConfig
        from opdlm.eval.scoring import score_file

        flags = {
            "data_dir": str(data_dir) if data_dir else None,
            "seed": seed,
            "code_timeout_s": code_timeout_s,
            "code_workers": code_workers,
            "allow_unsandboxed": allow_unsandboxed,
            "benchmarks": [benchmark],
        }
        cfg = validate_config(EvalConfig, {k: v for k, v in flags.items() if v is not None}, source="score options")
        summary = score_file(benchmark, completions, cfg, json_out=json_out)
        typer.echo(
            f"{benchmark}: accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['n']}) on {completions}"
        )
        if json_out is not None:
            typer.echo(f"result -> {json_out} (samples: {summary['samples_path']})")
