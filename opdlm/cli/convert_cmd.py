"""``opdlm convert``: teacher directory in, block-diffusion student directory out."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        teacher: str = typer.Option(..., "--teacher", help="Teacher source: a local Hugging Face model directory (or hf://ORG/MODEL)."),
        out: Path = typer.Option(..., "--out", help="Output directory for the converted student (must not exist)."),
        block_size: int = typer.Option(4, "--block-size", help="Block size B of the block-causal attention (>= 1)."),
        logit_shift: bool = typer.Option(False, "--logit-shift/--no-logit-shift", help="Position j-1 predicts token j."),
        prompt_attention: str = typer.Option(
            "block", "--prompt-attention", help="block (the paper's: prompt bidirectional inside B-blocks) or causal."
        ),
        enable_thinking: bool = typer.Option(
            False, "--enable-thinking/--no-enable-thinking", help="Chat template thinking mode stored in config.json."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    ) -> None:
        """Convert a causal LM into a block-diffusion student (weights unchanged, mask token added)."""
        from opdlm.models.convert import convert_teacher

        path = convert_teacher(
            teacher, out, block_size=block_size, logit_shift=logit_shift, overwrite=overwrite,
            prompt_attention=prompt_attention, enable_thinking=enable_thinking,
        )  # fmt: skip
        typer.echo(
            f"converted {teacher} -> {path} (block_size={block_size}, logit_shift={logit_shift}, "
            f"prompt_attention={prompt_attention}, enable_thinking={enable_thinking})"
        )
