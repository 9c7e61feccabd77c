"""One generation interface over both kinds of model, so a teacher and its student share the harness.

A converted student (``config.json`` carries ``block_size`` and ``mask_token_id``) decodes with the
block-diffusion sampler; any other causal LM decodes autoregressively. Both return a
:class:`~opdlm.sampling.output.SampleBatch`, so accuracy, tokens per step and forward passes are
counted the same way for both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from opdlm.config.request import ModelLimits
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import SourceError


def is_student_dir(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds a converted block-diffusion student (by its ``config.json``)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise SourceError(f"model directory {model_dir} has no config.json (is it a Hugging Face model directory?)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not valid JSON ({exc.msg})") from None
    return config.get("block_size") is not None and config.get("mask_token_id") is not None


def stored_enable_thinking(model_dir: str | Path) -> bool | None:
    """A student's stored ``enable_thinking`` (absent = false); None when ``model_dir`` is not a student."""
    if not is_student_dir(model_dir):
        return None
    return bool(json.loads((Path(model_dir) / "config.json").read_text()).get("enable_thinking", False))


@dataclass
class ModelRunner:
    """A loaded model that turns prompt token ids into a :class:`SampleBatch`.

    Attributes:
        kind: ``student`` (block-diffusion sampler) or ``causal_lm`` (autoregressive decoding).
        tokenizer: the model's Hugging Face tokenizer.
        sampler_defaults: the student's stored sampler settings; None for a causal LM.
        enable_thinking: the chat template's thinking mode for this model's prompts (a student's
            from its config.json; a causal LM's from the recipe, default false).
        limits: what one decode may ask of the model (its positions, longest token), read from
            its config.json and tokenizer when it was loaded; None: unchecked (a scripted runner).
    """

    kind: str
    model_dir: Path
    tokenizer: object
    sampler_defaults: SamplerConfig | None
    _model: object
    _sampler: object | None
    enable_thinking: bool = False
    limits: ModelLimits | None = None

    def format_prompt(self, question: str, domain: str | None = None, math_suffix: bool = False) -> str:
        """The prompt text this model is given for ``question`` (its chat template and thinking mode)."""
        from opdlm.data.prompting import format_prompt

        return format_prompt(self.tokenizer, question, domain, math_suffix, self.enable_thinking)

    @property
    def model(self):
        """The loaded Hugging Face model (the student's or the causal LM's), e.g. to score log-likelihoods."""
        return self._model

    def generate(self, prompt_ids: list[list[int]], cfg: SamplerConfig, seed: int, max_batch: int | None = None):
        """Decode one batch.

        Args:
            prompt_ids: formatted, tokenised prompts (ragged).
            cfg: sampler settings; a causal LM reads only ``max_new_tokens``, ``temperature``,
                ``top_k`` and ``top_p``.
            seed: makes sampling at temperature > 0 reproducible.
            max_batch: a student decodes at most this many rows at once, the others queue for a
                free slot (None: all at once); a causal LM decodes all ``prompt_ids`` at once.
        """
        import torch

        if self._sampler is not None:
            from opdlm.sampling.block_sampler import BlockDiffusionSampler

            student = self._sampler.student
            generator = torch.Generator(device=student.device).manual_seed(seed)
            return BlockDiffusionSampler(student, max_batch).generate(prompt_ids, cfg, generator=generator)
        from opdlm.sampling.autoregressive import generate_autoregressive

        return generate_autoregressive(
            self._model,
            self.tokenizer,
            prompt_ids,
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            generator_seed=seed,
        )


def load_runner(
    model_dir: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    backend: str | None = None,
    enable_thinking: bool | None = None,
) -> ModelRunner:
    """Load ``model_dir`` as a student when it is one, otherwise as a plain causal LM.

    Args:
        enable_thinking: the recipe's ``convert.enable_thinking`` (None: the student's stored value,
            false for a causal LM). A student stored with the other value is refused: it would be
            scored on prompts shaped unlike the ones it was trained on.

    Raises:
        ConfigError: ``enable_thinking`` disagrees with the student's config.json.
    """
    from opdlm.models.student import model_limits

    model_dir = Path(model_dir)
    if is_student_dir(model_dir):
        from opdlm.models.student import load_student
        from opdlm.sampling.block_sampler import BlockDiffusionSampler

        student = load_student(model_dir, device=device, dtype=dtype, backend=backend)
        stored = student.meta.enable_thinking
        if enable_thinking is not None and enable_thinking != stored:
            from opdlm.errors import ConfigError

            raise ConfigError(
                f"{model_dir}: the student was converted with enable_thinking={str(stored).lower()} but the recipe's "
                f"convert.enable_thinking is {str(enable_thinking).lower()}"
            )
        sampler = BlockDiffusionSampler(student)
        limits = model_limits(model_dir, student.tokenizer)
        return ModelRunner(
            "student",
            model_dir,
            student.tokenizer,
            student.meta.sampler_defaults,
            student.model,
            sampler,
            stored,
            limits,
        )
    from opdlm.models.student import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir, device=device, dtype=dtype, backend=backend)
    limits = model_limits(model_dir, tokenizer)
    return ModelRunner("causal_lm", model_dir, tokenizer, None, model, None, bool(enable_thinking), limits)
