"""``opdlm generate``: sample from a converted student with the block-diffusion sampler."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate(
        model: Path = typer.Option(..., "--model", help="Converted student directory."),
        prompt: list[str] = typer.Option(..., "--prompt", help="Prompt text; repeat for a batch."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Cap on generated tokens."),
        block_size: int = typer.Option(None, "--block-size", help="Override the model's block size."),
        steps_per_block: int = typer.Option(
            None, "--steps-per-block", help="Denoising steps per block (static quota)."
        ),
        remasking: str = typer.Option(None, "--remasking", help="static or dynamic."),
        threshold: float = typer.Option(None, "--threshold", help="Confidence threshold for dynamic remasking."),
        temperature: float = typer.Option(None, "--temperature", help="0 = greedy."),
        top_k: int = typer.Option(None, "--top-k", help="0 disables."),
        top_p: float = typer.Option(None, "--top-p", help="1.0 disables."),
        seed: int = typer.Option(0, "--seed", help="Random seed (sampling is deterministic for a seed)."),
        device: str = typer.Option("auto", "--device"),
        backend: str = typer.Option(None, "--attn", help="Attention backend: sdpa, eager or flex_attention."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt."),
        raw_prompt: bool = typer.Option(
            False, "--raw-prompt", help="Tokenize --prompt as given, without the model's chat template."
        ),
    ) -> None:
        """Generate text block by block; prints text, or JSON with tokens_per_step and num_forwards.

        Each ``--prompt`` is a user question rendered with the model's chat template in its stored
        thinking mode (config.json ``enable_thinking``), exactly as in training and evaluation;
        ``--raw-prompt`` sends the text as it is.
        """
        import torch

        from opdlm.errors import ConfigError
        from opdlm.models.attention import check_backend
        from opdlm.models.student import load_student, resolve_device, stored_sampler_defaults
        from opdlm.sampling.block_sampler import BlockDiffusionSampler

        # every option is checked against the model's stored defaults before the (slow) model load
        if any(not p for p in prompt):
            raise ConfigError("--prompt: an empty prompt (give each --prompt some text)")
        stored = stored_sampler_defaults(model)
        try:
            cfg = stored.with_overrides(
                max_new_tokens=max_new_tokens,
                block_size=block_size,
                denoise_steps_per_block=steps_per_block,
                remasking=remasking,
                threshold=threshold,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
            )
        except Exception as exc:
            from pydantic import ValidationError

            from opdlm.config.base import format_validation_error
            from opdlm.config.sampler import SamplerConfig

            if isinstance(exc, ValidationError):
                raise ConfigError(format_validation_error(exc, SamplerConfig, "generate options")) from None
            raise
        resolve_device(device)
        if backend is not None:
            check_backend(backend)
        student = load_student(model, device=device, backend=backend)
        tok = student.tokenizer
        from opdlm.data.prompting import encode_prompts, format_prompt

        texts = (
            prompt
            if raw_prompt
            else [format_prompt(tok, p, enable_thinking=student.meta.enable_thinking) for p in prompt]
        )
        prompts = encode_prompts(tok, texts)
        if any(not p for p in prompts):
            raise ConfigError("--prompt: a prompt encodes to zero tokens")
        gen = torch.Generator(device=student.device).manual_seed(seed)
        batch = BlockDiffusionSampler(student).generate(prompts, cfg, generator=gen)
        for rec in batch.records():
            if as_json:
                typer.echo(json.dumps(rec))
            else:
                typer.echo(rec["text"])
                typer.echo(
                    f"[{len(rec['token_ids'])} tokens, {rec['tokens_per_step']:.2f} tokens/step, {rec['num_forwards']} "
                    "forwards]",
                    err=True,
                )
