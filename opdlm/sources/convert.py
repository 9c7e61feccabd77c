"""A teacher source in, a block-diffusion student directory out (METHOD §2): ``opdlm convert``.

The source is resolved first (:mod:`opdlm.sources.resolve`); a released block-diffusion checkpoint
(divelab's ``a2d-qwen3``, JetAstra's ``sdar``) is then imported with its weights unchanged
(:mod:`opdlm.formats.importer`), and any other causal LM converted
(:func:`opdlm.models.convert.convert_causal_lm`).
"""

from __future__ import annotations

from pathlib import Path

from opdlm.config.sampler import SamplerConfig
from opdlm.config.teacher import TeacherConfig
from opdlm.errors import OpdlmError
from opdlm.formats.importer import detect_format, import_checkpoint
from opdlm.fsutil import check_output_location, check_replaceable
from opdlm.models.convert import convert_causal_lm, read_config
from opdlm.models.geometry import check_prompt_attention
from opdlm.sources.resolve import resolve_model_source


def convert_teacher(
    teacher: str | Path,
    out: str | Path,
    block_size: int | None = None,
    logit_shift: bool = False,
    sampler: SamplerConfig | None = None,
    overwrite: bool = False,
    prompt_attention: str = "block",
    enable_thinking: bool = False,
    notes: list[str] | None = None,
    teacher_config: TeacherConfig | None = None,
) -> Path:
    """Write a block-diffusion student converted from ``teacher`` to ``out``.

    A ``teacher`` that is already a block-diffusion checkpoint in a released format (divelab's
    ``a2d-qwen3``, JetAstra's ``sdar``) is imported instead (:mod:`opdlm.formats.importer`): same
    weights, its declared block size and mask token, no remote code run.

    Args:
        teacher: a model source (local Hugging Face directory, ``hf://``, ``s3://`` or ``builtin:tiny``).
        out: output directory; must not exist unless ``overwrite``.
        block_size: B of the block-causal attention (>= 1); None means 4, or what an imported
            checkpoint declares (a different explicit value then fails).
        logit_shift: position j-1 predicts token j (Fast-dLLM v2 style) instead of j predicting j.
        sampler: sampler defaults stored in ``config.json``; ``block_size`` is forced to match.
        prompt_attention: ``block`` (the paper's: the prompt is bidirectional inside B-blocks counted
            backwards from the response start) or ``causal``; an import must match its format's.
        enable_thinking: the chat template's thinking mode for every prompt the student sees
            (METHOD §6: false for the paper's non-thinking runs).
        notes: when given, receives lines worth telling the user (what an import read from where).
        teacher_config: the recipe's ``teacher`` section, which builds a ``builtin:tiny`` teacher
            (None: a recipe's defaults).

    Returns:
        The absolute output path.
    """
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise OpdlmError(f"block_size must be an integer >= 1 (got {block_size!r})")
    try:
        check_prompt_attention(prompt_attention)
    except ValueError as exc:
        raise OpdlmError(str(exc)) from None
    check_output_location(out, {"--teacher": teacher}, flag="--out")  # before a download or a bootstrap
    check_replaceable(out, overwrite, flag="--out")
    src_dir = resolve_model_source(teacher, "teacher", teacher_config, enable_thinking)
    check_output_location(out, {"--teacher": src_dir}, flag="--out")  # what it resolved to (a cache, a link)
    fmt = detect_format(read_config(src_dir), f"{src_dir}/config.json")
    if fmt is not None:
        path, lines = import_checkpoint(
            src_dir,
            out,
            fmt,
            str(teacher),
            block_size,
            logit_shift,
            sampler,
            overwrite,
            prompt_attention=prompt_attention,
            enable_thinking=enable_thinking,
        )
        if notes is not None:
            notes.extend(lines)
        return path
    return convert_causal_lm(
        src_dir,
        out,
        4 if block_size is None else block_size,
        logit_shift,
        sampler,
        overwrite,
        prompt_attention=prompt_attention,
        enable_thinking=enable_thinking,
        source=str(teacher),
    )
