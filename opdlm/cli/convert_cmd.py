"""``opdlm convert``: teacher directory in, block-diffusion student directory out.

The teacher may also be a released block-diffusion checkpoint (divelab ``a2d-qwen3``, JetAstra
``sdar``): it is then imported with its weights unchanged (:mod:`opdlm.formats.importer`).
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        teacher: str = typer.Option(
            ...,
            "--teacher",
            help="Source: a local Hugging Face model directory, hf://ORG/MODEL, s3://..., builtin:tiny, a GGUF file "
            "(x.gguf, s3://.../x.gguf) or builtin:smollm2-135m-instruct; "
            "a causal LM, or a divelab (a2d-qwen3) / SDAR block-diffusion checkpoint to import.",
        ),
        out: Path = typer.Option(..., "--out", help="Output directory for the converted student (must not exist)."),
        block_size: int = typer.Option(
            None, "--block-size", help="Block size B (default 4; an imported checkpoint's declared B)."
        ),
        logit_shift: bool = typer.Option(
            False, "--logit-shift/--no-logit-shift", help="Position j-1 predicts token j."
        ),
        prompt_attention: str = typer.Option(
            "block", "--prompt-attention", help="block (the paper's: prompt bidirectional inside B-blocks) or causal."
        ),
        enable_thinking: bool = typer.Option(
            False, "--enable-thinking/--no-enable-thinking", help="Chat template thinking mode stored in config.json."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    ) -> None:
        """Convert a causal LM into a block-diffusion student (weights unchanged, mask token added)."""
        import json

        from opdlm.sources.convert import convert_teacher

        notes: list[str] = []
        path = convert_teacher(
            teacher,
            out,
            block_size=block_size,
            logit_shift=logit_shift,
            overwrite=overwrite,
            prompt_attention=prompt_attention,
            enable_thinking=enable_thinking,
            notes=notes,
        )
        config = json.loads((path / "config.json").read_text())
        for line in notes:
            typer.echo(f"note: {line}")
        kind = f"imported ({config['opdlm_imported_format']})" if config.get("opdlm_imported_format") else "converted"
        typer.echo(
            f"{kind} {teacher} -> {path} (block_size={config['block_size']}, logit_shift={config['logit_shift']}, "
            f"prompt_attention={config['prompt_attention']}, enable_thinking={config['enable_thinking']})"
        )
