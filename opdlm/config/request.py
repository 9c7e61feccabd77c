"""One generation request, checked against the model before any work: the served model, ``opdlm generate``
and ``opdlm eval`` take the same limits.

A request is prompts plus optional sampler overrides, a seed and ``raw_prompt``. Its limits come from
two places: the ranges of :class:`~opdlm.config.sampler.SamplerConfig` (one home for them), and the
model's own size, :class:`ModelLimits`, read from its ``config.json`` and tokenizer (never a
constant): the positions its rotary embedding was built for and the longest token of its vocabulary.
Everything that can be checked without the tokenizer's output is checked by :func:`validate_request`;
:func:`check_prompt_tokens` checks the tokenised prompts (a few milliseconds) before the sampler
runs. Each problem is one :class:`~opdlm.errors.ConfigError` line that names the field in the
caller's words (``params: seed``, ``--max-new-tokens``) and quotes at most a short prefix of a value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import Field, StrictBool, StrictStr, ValidationError

from opdlm.config.base import SEED_MAX, StrictModel
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import ConfigError

# prompts decoded together in one request: one sampler batch, whose KV cache grows with it; more is a
# second request (or `opdlm eval`, which batches a benchmark itself)
MAX_PROMPTS = 64
QUOTE_CHARS = 40  # an error line quotes at most this much of a value

# the sampler overrides a request may carry: every SamplerConfig field
SAMPLER_FIELDS = tuple(SamplerConfig.model_fields)


class ModelLimits(StrictModel):
    """What one model can take, read from the model itself (:func:`opdlm.models.student.model_limits`).

    Attributes:
        positions: ``max_position_embeddings`` of its ``config.json``: prompt plus response must fit.
        block_causal: a block-diffusion student lays its response out in whole blocks (the last one
            padded with masks), so the response takes ``ceil(max_new_tokens / B) * B`` positions; a
            causal LM takes ``max_new_tokens``.
        max_token_chars: characters of the longest token in its vocabulary (None: unknown). A prompt
            longer than ``positions * max_token_chars`` characters cannot fit, so it is refused
            before it is tokenised.
        max_prompts: prompts one request may carry.
    """

    positions: int = Field(ge=2)
    block_causal: bool = True
    max_token_chars: int | None = Field(None, ge=1)
    max_prompts: int = Field(MAX_PROMPTS, ge=1)

    def response_positions(self, cfg: SamplerConfig) -> int:
        """Positions the response occupies under ``cfg`` (whole blocks for a student)."""
        if not self.block_causal:
            return cfg.max_new_tokens
        return math.ceil(cfg.max_new_tokens / cfg.block_size) * cfg.block_size

    def max_new_tokens_for(self, prompt_tokens: int, block_size: int) -> int:
        """The largest ``max_new_tokens`` a ``prompt_tokens``-token prompt leaves room for."""
        room = self.positions - prompt_tokens
        return (room // block_size) * block_size if self.block_causal else room


class GenerationRequest(StrictModel):
    """Prompts and how to decode them; a sampler field left None keeps the model's stored default."""

    prompt: list[StrictStr] = Field(min_length=1, description="Prompt texts, one response each.")
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="Seed of the sampler's random generator (sampling at temperature > 0)."
    )
    raw_prompt: StrictBool = Field(False, description="Tokenise the prompts as given, without the chat template.")
    max_new_tokens: int | None = None
    block_size: int | None = None
    denoise_steps_per_block: int | None = None
    remasking: str | None = None
    threshold: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None

    def sampler_overrides(self) -> dict:
        return {name: getattr(self, name) for name in SAMPLER_FIELDS}


Namer = Callable[[str], str]


def quote(value, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to a short prefix: an error line never echoes a long value back."""
    text = repr(value)
    size = len(value) if isinstance(value, str | list | tuple | dict) else len(text)
    unit = "characters" if isinstance(value, str) or len(text) == size else "items"
    return text if len(text) <= limit else f"{text[:limit]}... ({size:,} {unit})"


def _field_error(exc: ValidationError, name: Namer, fallback: str) -> ConfigError:
    """The first problem of ``exc`` as one line naming the field as the caller calls it."""
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    text = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return ConfigError(f"{name(str(loc[0]))}: unknown setting")
    if not loc:  # a rule between fields names them itself
        return ConfigError(f"{fallback}: {text}")
    where = name(str(loc[0])) + "".join(f"[{p}]" for p in loc[1:])
    got = "" if first["type"] == "missing" else f" (got {quote(first.get('input'))})"
    return ConfigError(f"{where}: {text}{got}")


def validate_request(
    data: dict, defaults: SamplerConfig, limits: ModelLimits, name: Namer = str, source: str = "request"
) -> tuple[GenerationRequest, SamplerConfig]:
    """Check a request before any work; returns it and the sampler settings it decodes with.

    Args:
        data: ``prompt`` (a list of strings), ``seed``, ``raw_prompt`` and any SamplerConfig field.
        defaults: the model's stored sampler settings (what a field left out or None means).
        limits: the model's :class:`ModelLimits`.
        name: how the caller names a field in an error (``params: seed``, ``--seed``).
        source: what a rule between fields is reported against.

    Raises:
        ConfigError: one line naming the field: a wrong type, a value out of range, too many or too
            long prompts, a response that does not fit the model's positions.
    """
    try:
        request = GenerationRequest.model_validate(data)
        cfg = defaults.with_overrides(**request.sampler_overrides())
    except ValidationError as exc:
        raise _field_error(exc, name, source) from None
    if len(request.prompt) > limits.max_prompts:
        raise ConfigError(
            f"{name('prompt')}: {len(request.prompt)} prompts in one request; at most {limits.max_prompts} "
            "(send the rest in another request)"
        )
    if limits.max_token_chars is not None:
        most = limits.positions * limits.max_token_chars
        for i, text in enumerate(request.prompt):
            if len(text) > most:
                raise ConfigError(
                    f"{name('prompt')}[{i}]: {len(text):,} characters cannot fit the model's {limits.positions:,} "
                    f"positions (config.json max_position_embeddings; its longest token is {limits.max_token_chars} "
                    f"characters): {quote(text)}"
                )
    for i, text in enumerate(request.prompt):
        if not text.strip():
            raise ConfigError(f"{name('prompt')}[{i}]: an empty prompt (give each prompt some text)")
    check_max_new_tokens(cfg, limits, name)
    return request, cfg


def check_max_new_tokens(cfg: SamplerConfig, limits: ModelLimits, name: Namer = str) -> None:
    """Refuse a ``max_new_tokens`` that leaves no room for even a one-token prompt (no tokenizer needed).

    Raises:
        ConfigError: naming ``max_new_tokens`` and the largest value that fits.
    """
    if limits.response_positions(cfg) + 1 > limits.positions:
        raise ConfigError(
            f"{name('max_new_tokens')}: {cfg.max_new_tokens:,} new tokens do not fit the model's {limits.positions:,} "
            f"positions (config.json max_position_embeddings) with any prompt; at most "
            f"{limits.max_new_tokens_for(1, cfg.block_size):,} with a one-token prompt"
        )


def check_prompt_tokens(
    prompt_ids: list[list[int]],
    cfg: SamplerConfig,
    limits: ModelLimits,
    name: Namer = str,
    what: Callable[[int], str] | None = None,
) -> None:
    """Check tokenised prompts before decoding: none empty, and the longest plus the response fits.

    Args:
        prompt_ids: the prompts as the model reads them (chat template applied).
        what: names prompt ``i`` in an error (default ``<name('prompt')>[i]``), e.g. a benchmark row.

    Raises:
        ConfigError: a prompt encodes to no tokens, or prompt plus response exceed the model's positions.
    """
    what = what or (lambda i: f"{name('prompt')}[{i}]")
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ConfigError(f"{what(i)}: the prompt encodes to zero tokens")
    if not prompt_ids:
        return
    longest = max(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    n = len(prompt_ids[longest])
    response = limits.response_positions(cfg)
    if n + response > limits.positions:
        room = limits.max_new_tokens_for(n, cfg.block_size)
        fix = f"at most {room:,} new tokens fit it" if room >= 1 else "shorten it"
        raise ConfigError(
            f"{what(longest)}: {n:,} prompt tokens (chat template included) + {cfg.max_new_tokens:,} new tokens "
            f"({name('max_new_tokens')}) exceed the model's {limits.positions:,} positions (config.json "
            f"max_position_embeddings); {fix}"
        )
