"""Convert a causal LM (the teacher) into a block-diffusion student directory (METHOD §2).

The weights are unchanged; the tokenizer gains a mask token (reusing an unused padded embedding row
when the embedding matrix is larger than the tokenizer, else resizing); ``config.json`` gains
``block_size``, ``mask_token_id``, ``logit_shift``, ``prompt_attention``, ``enable_thinking`` and
``sampler_defaults``. The result is written
to a temporary sibling directory and renamed into place only when complete.

This module converts a local causal-LM directory (:func:`convert_causal_lm`); resolving a source name
and importing released block-diffusion checkpoints instead is :func:`opdlm.sources.convert.convert_teacher`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from opdlm import __version__
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import OpdlmError, SourceError
from opdlm.fsutil import atomic_dir
from opdlm.models.model_dir import check_weights_match_config
from opdlm.models.student import verify_student_dir

MASK_TOKEN = "<|MASK|>"
# Families whose attention takes a 4-D mask and explicit position ids as given (transformers 5.x).
SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama", "mistral")
_WEIGHT_GLOBS = ("*.safetensors", "model.safetensors.index.json")


def read_config(src_dir: Path) -> dict:
    try:
        return json.loads((src_dir / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{src_dir}/config.json is not valid JSON: {exc.msg} (line {exc.lineno})") from None


def _check_architecture(src_dir: Path) -> dict:
    raw = read_config(src_dir)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SourceError(
            f"unsupported architecture {model_type!r} in {src_dir}/config.json; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            " (block-diffusion checkpoints to import: a2d-qwen3, sdar)"
        )
    return raw


def _mask_token_id(tokenizer) -> tuple[int, bool]:
    """Register the mask token; returns ``(mask_id, added)``. Never equal to pad or EOS."""
    reserved = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    if tokenizer.mask_token is not None and tokenizer.mask_token_id not in reserved:
        return int(tokenizer.mask_token_id), False
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    mask_id = int(tokenizer.convert_tokens_to_ids(MASK_TOKEN))
    if mask_id in reserved:
        raise OpdlmError(f"mask token {MASK_TOKEN!r} got id {mask_id}, which is also pad or EOS")
    return mask_id, True


def convert_causal_lm(
    src_dir: Path,
    out: str | Path,
    block_size: int,
    logit_shift: bool = False,
    sampler: SamplerConfig | None = None,
    overwrite: bool = False,
    prompt_attention: str = "block",
    enable_thinking: bool = False,
    source: str | None = None,
) -> Path:
    """Write a block-diffusion student converted from the causal LM in local directory ``src_dir`` to ``out``.

    What :func:`opdlm.sources.convert.convert_teacher` runs once the teacher is resolved to a
    directory and is not a released block-diffusion checkpoint to import.

    Args:
        src_dir: a checked local Hugging Face directory of one of :data:`SUPPORTED_MODEL_TYPES`.
        out: output directory; must not exist unless ``overwrite``.
        block_size: B of the block-causal attention (>= 1).
        logit_shift: position j-1 predicts token j (Fast-dLLM v2 style) instead of j predicting j.
        sampler: sampler defaults stored in ``config.json``; ``block_size`` is forced to match.
        prompt_attention: ``block`` (the paper's) or ``causal``.
        enable_thinking: the chat template's thinking mode for every prompt the student sees.
        source: how the teacher was named (stamped as ``opdlm_converted_from``; default ``src_dir``).

    Returns:
        The absolute output path.
    """
    from transformers import AutoConfig, AutoTokenizer

    _check_architecture(src_dir)
    sampler = (sampler or SamplerConfig()).with_overrides(block_size=block_size)

    config = AutoConfig.from_pretrained(src_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src_dir)
    except (OSError, ValueError) as exc:
        raise SourceError(f"could not load the tokenizer from {src_dir}: {str(exc).splitlines()[0]}") from None
    mask_id, _ = _mask_token_id(tokenizer)
    n_rows = config.get_text_config().vocab_size
    weight_files = [p for g in _WEIGHT_GLOBS for p in sorted(src_dir.glob(g))]
    check_weights_match_config(src_dir, "teacher")  # before copying: a missing shard, sizes that contradict weights

    with atomic_dir(out, overwrite=overwrite, inputs={"--teacher": src_dir}, flag="--out") as tmp:
        if mask_id < n_rows and any(p.suffix == ".safetensors" for p in weight_files):
            # The mask reuses an unused padded row: weights are copied byte for byte.
            for p in weight_files:
                shutil.copy2(p, tmp / p.name)
        else:
            _save_resized_weights(src_dir, tmp, mask_id + 1 if mask_id >= n_rows else n_rows)
            config = AutoConfig.from_pretrained(tmp)
        config.block_size = block_size
        config.mask_token_id = mask_id
        config.logit_shift = bool(logit_shift)
        config.prompt_attention = prompt_attention
        config.enable_thinking = bool(enable_thinking)
        config.sampler_defaults = sampler.model_dump()
        config.opdlm_version = __version__
        config.opdlm_converted_from = str(src_dir if source is None else source)
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (src_dir / "generation_config.json").is_file():
            shutil.copy2(src_dir / "generation_config.json", tmp / "generation_config.json")
        verify_student_dir(tmp, "converted student", where=str(out))  # done only once the output loads
    return Path(out).absolute()


def _save_resized_weights(src_dir: Path, dst: Path, n_rows: int) -> None:
    """Load the teacher, grow its embeddings to ``n_rows`` (mean-initialised), save safetensors."""
    from transformers import AutoModelForCausalLM

    from opdlm.progress import library_bars

    with library_bars():  # transformers' "Loading weights" bar follows OPDLM_PROGRESS
        model = AutoModelForCausalLM.from_pretrained(src_dir, dtype="auto")
    if model.get_input_embeddings().weight.shape[0] < n_rows:
        model.resize_token_embeddings(n_rows, mean_resizing=True)
    model.save_pretrained(dst, safe_serialization=True)
