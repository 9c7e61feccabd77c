"""The ``--model_args`` of lm-eval's ``opdlm`` model type, typed and validated once."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator

from opdlm.config.base import StrictModel, format_validation_error
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import ConfigError

#: The model args that override one field of the sampler settings (:class:`SamplerConfig`) each.
SAMPLER_ARGS = ("threshold", "block_size", "denoise_steps_per_block", "remasking", "temperature", "top_k", "top_p")


class LmEvalModelArgs(StrictModel):
    """What ``--model_args pretrained=DIR,threshold=0.9,...`` may say (unknown keys are refused).

    The sampler fields override the student's stored settings (``config.json``), exactly as
    ``opdlm eval --threshold/--block-size`` do; a request's own ``gen_kwargs`` (``temperature``,
    ``top_p``, ``top_k``, ``do_sample``, ``max_gen_toks``) override them again, as in lm-eval's hf model.
    """

    pretrained: str = Field(..., min_length=1, description="A converted student or a plain causal LM directory.")
    threshold: float | None = Field(None, gt=0.0, le=1.0, description="Dynamic-remasking threshold (students).")
    block_size: int | None = Field(None, ge=1, description="Block size (students).")
    denoise_steps_per_block: int | None = Field(None, ge=1, description="Steps per block (students).")
    remasking: Literal["static", "dynamic"] | None = Field(
        None, description="static or dynamic (students); setting a threshold alone selects dynamic."
    )
    temperature: float | None = Field(None, ge=0.0, description="Sampling temperature; 0 = greedy.")
    top_k: int | None = Field(None, ge=0, description="Top-k; 0 disables.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus mass; 1.0 disables.")
    max_gen_toks: int | None = Field(
        None, ge=1, description="Generation cap when a request gives none (default: the sampler's max_new_tokens)."
    )
    chat_template: bool = Field(
        True,
        description="Wrap each context as one user turn in the model's chat template, as `opdlm eval` does "
        "(skipped when lm-eval's --apply_chat_template already formatted it).",
    )
    enable_thinking: bool | None = Field(
        None,
        description="Chat-template thinking mode (Qwen3). None: a student's stored value (its config.json), "
        "false for a causal LM, as in `opdlm eval`; a value a student was not converted with is refused.",
    )
    batch_size: int = Field(16, ge=1, description="Requests decoded together (lm-eval's --batch_size; 'auto' = 16).")
    max_batch_size: int | None = Field(None, description="Accepted for lm-eval's CLI; unused.")
    seed: int = Field(0, description="Batch b samples with seed + b, as in `opdlm eval`.")
    device: str = Field("auto", description="auto (cuda when present), cpu or cuda[:N] (lm-eval's --device).")
    dtype: str = Field("auto", description="auto, float32, bfloat16 or float16.")
    attn_backend: str | None = Field(None, description="Attention backend (default: the device's default).")
    requests_jsonl: str | None = Field(
        None,
        description="Where to write one JSON line of speed per generate_until request "
        "(`opdlm lm-eval` fills it in beside --output_path).",
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _auto_batch(cls, value):
        return 16 if value in (None, "auto") or (isinstance(value, str) and value.startswith("auto")) else value

    @field_validator("device", mode="before")
    @classmethod
    def _default_device(cls, value):
        return "auto" if value is None else value

    def sampler_overrides(self) -> dict:
        """The sampler fields that were set (None = keep the model's or the recipe's setting)."""
        return {k: getattr(self, k) for k in SAMPLER_ARGS if getattr(self, k) is not None}


def parse_model_args(kwargs: dict) -> LmEvalModelArgs:
    """Validate lm-eval's keyword arguments; a bad one is a one-line :class:`ConfigError` naming it."""
    try:
        return LmEvalModelArgs.model_validate(kwargs)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, LmEvalModelArgs, "lm-eval --model_args")) from None


def base_sampler(defaults: SamplerConfig | None, args: LmEvalModelArgs) -> SamplerConfig:
    """The run's sampler settings before any request's ``gen_kwargs``.

    A student starts from its stored defaults, a causal LM from greedy decoding (as in
    :func:`opdlm.eval.harness.sampler_config`); the set model args apply in one validated step, and
    a threshold without ``remasking`` selects dynamic remasking.
    """
    overrides = args.sampler_overrides()
    if defaults is None:  # a causal LM reads only temperature, top_k, top_p and the length cap
        overrides = {k: v for k, v in overrides.items() if k in ("temperature", "top_k", "top_p")}
        defaults = SamplerConfig(temperature=0.0)
    elif "threshold" in overrides and "remasking" not in overrides:
        overrides["remasking"] = "dynamic"
    if args.max_gen_toks is not None:
        overrides["max_new_tokens"] = args.max_gen_toks
    return _validated(defaults, overrides)


def request_sampler(base: SamplerConfig, gen_kwargs: dict) -> tuple[SamplerConfig, list[str]]:
    """Sampler settings for one request and its stop strings.

    ``do_sample: false`` means greedy whatever the temperature says (lm-eval's convention);
    ``max_gen_toks`` caps the length; ``until`` is a string or a list of strings.
    """
    gen = dict(gen_kwargs or {})
    until = gen.get("until") or []
    stops = [until] if isinstance(until, str) else [s for s in until if isinstance(s, str)]
    overrides: dict = {}
    if gen.get("max_gen_toks") is not None:
        overrides["max_new_tokens"] = int(gen["max_gen_toks"])
    for key in ("temperature", "top_k", "top_p"):
        if gen.get(key) is not None:
            overrides[key] = gen[key]
    if gen.get("do_sample") is False:
        overrides["temperature"] = 0.0
    return _validated(base, overrides), stops


def _validated(base: SamplerConfig, overrides: dict) -> SamplerConfig:
    try:
        return base.with_overrides(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, SamplerConfig, "lm-eval sampler settings")) from None
