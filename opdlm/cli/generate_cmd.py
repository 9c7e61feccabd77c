"""``opdlm generate``: sample from a converted student with the block-diffusion sampler."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import get_args

import typer

from opdlm.config.sampler import SamplerConfig
from opdlm.data.synthetic import SUITE_SCOPE

# request field -> the flag that sets it, so an error names what the user typed
FLAGS = {"denoise_steps_per_block": "--steps-per-block", "prompt": "--prompt"}

# one line per paragraph: typer's rich help keeps a docstring's line breaks inside a paragraph
HELP = "\n\n".join(
    [
        "Generate text block by block; prints text, or JSON with tokens_per_step and num_forwards.",
        "Each --prompt is a user question rendered with the model's chat template in its stored thinking mode "
        "(config.json enable_thinking), exactly as in training and evaluation; --raw-prompt sends the text as it "
        "is. Every option, and prompt plus --max-new-tokens against the model's positions (config.json "
        "max_position_embeddings), is checked before the model loads.",
        SUITE_SCOPE,
    ]
)


# the choices of --remasking are SamplerConfig's, so a new mode is one edit there
Remasking = StrEnum("Remasking", {mode: mode for mode in get_args(SamplerConfig.model_fields["remasking"].annotation)})


def flag_name(field: str) -> str:
    """``max_new_tokens`` -> ``--max-new-tokens``."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def register(app: typer.Typer) -> None:
    @app.command("generate", help=HELP)
    def generate(
        model: Path = typer.Option(..., "--model", help="Converted student directory."),
        prompt: list[str] = typer.Option(..., "--prompt", help="Prompt text; repeat for a batch (at most 64)."),
        max_new_tokens: int = typer.Option(
            None, "--max-new-tokens", help="Cap on generated tokens (prompt + cap must fit the model's positions)."
        ),
        block_size: int = typer.Option(None, "--block-size", help="Override the model's block size."),
        steps_per_block: int = typer.Option(
            None, "--steps-per-block", help="Denoising steps per block (static quota)."
        ),
        remasking: Remasking = typer.Option(
            None,
            "--remasking",
            help="Commit a fixed quota per step (static) or also every position above --threshold (dynamic).",
        ),  # fmt: skip
        threshold: float = typer.Option(
            None, "--threshold", help="Confidence threshold for dynamic remasking, in (0, 1]."
        ),
        temperature: float = typer.Option(None, "--temperature", help="0 = greedy."),
        top_k: int = typer.Option(None, "--top-k", help="0 disables."),
        top_p: float = typer.Option(None, "--top-p", help="In (0, 1]; 1.0 disables."),
        seed: int = typer.Option(0, "--seed", help="Random seed, 0 to 2**64-1 (sampling is deterministic for a seed)."),
        device: str = typer.Option("auto", "--device", help="auto (cuda when present), cpu or cuda[:N]."),
        backend: str = typer.Option(None, "--attn", help="Attention backend: sdpa, eager or flex_attention."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt."),
        raw_prompt: bool = typer.Option(
            False, "--raw-prompt", help="Tokenize --prompt as given, without the model's chat template."
        ),
    ) -> None:
        import torch

        from opdlm.config.request import check_prompt_tokens, validate_request
        from opdlm.models.attention import check_backend
        from opdlm.models.student import load_student, model_limits, resolve_device, stored_sampler_defaults
        from opdlm.numbers import show_rate
        from opdlm.sampling.block_sampler import BlockDiffusionSampler

        # every option is checked against the model's stored defaults and size before the (slow) model load
        defaults = stored_sampler_defaults(model)  # first: says when the folder is not a student
        limits = model_limits(model)
        request, cfg = validate_request(
            {
                "prompt": prompt,
                "seed": seed,
                "raw_prompt": raw_prompt,
                "max_new_tokens": max_new_tokens,
                "block_size": block_size,
                "denoise_steps_per_block": steps_per_block,
                "remasking": remasking.value if remasking is not None else None,
                "threshold": threshold,
                "temperature": temperature,
                "top_k": top_k,
                "top_p": top_p,
            },
            defaults,
            limits,
            name=flag_name,
            source="generate options",
        )
        resolve_device(device)
        if backend is not None:
            check_backend(backend)
        student = load_student(model, device=device, backend=backend)
        tok = student.tokenizer
        from opdlm.data.prompting import encode_prompts, format_prompt

        texts = (
            request.prompt
            if request.raw_prompt
            else [format_prompt(tok, p, enable_thinking=student.meta.enable_thinking) for p in request.prompt]
        )
        prompts = encode_prompts(tok, texts)
        check_prompt_tokens(prompts, cfg, limits, name=flag_name)
        gen = torch.Generator(device=student.device).manual_seed(request.seed)
        batch = BlockDiffusionSampler(student).generate(prompts, cfg, generator=gen)
        for rec in batch.records():
            if as_json:
                typer.echo(json.dumps(rec))
            else:
                typer.echo(rec["text"])
                typer.echo(
                    f"[{len(rec['token_ids'])} tokens, {show_rate(rec['tokens_per_step'])} tokens/step, "
                    f"{rec['num_forwards']} forwards]",
                    err=True,
                )
