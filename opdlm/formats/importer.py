"""Import a released block-diffusion checkpoint as an opdlm student (weights byte for byte).

:func:`import_checkpoint` is what ``opdlm convert --teacher SRC`` runs when ``SRC`` is in one of
the formats of :data:`FORMATS` (dispatched on ``config.json``'s ``model_type``). The output is the
same kind of directory :func:`opdlm.models.convert.convert_causal_lm` writes from a causal teacher:
``model_type: qwen3``, the checkpoint's safetensors unchanged, its tokenizer with the mask token
registered, and ``block_size``, ``mask_token_id``, ``logit_shift``, ``prompt_attention`` and
``sampler_defaults`` in ``config.json``, taken from what the checkpoint declares or documents.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from opdlm.errors import SourceError
from opdlm.formats import common
from opdlm.formats.common import ImportFormat


def _formats() -> dict[str, ImportFormat]:
    from opdlm.formats import divelab, sdar

    return {t: f for f in (divelab.FORMAT, sdar.FORMAT) for t in f.model_types}


def detect_format(raw: dict, where: str) -> ImportFormat | None:
    """The import format of a ``config.json`` dict, or None for a plain causal LM.

    Raises:
        SourceError: a known block-diffusion family in a variant that cannot be imported.
    """
    model_type = raw.get("model_type")
    if model_type in ("sdar_moe", "a2d-qwen2", "a2d-llama"):
        raise SourceError(f"{where}: model_type {model_type!r} is not supported (importable: a2d-qwen3, sdar)")
    fmt = _formats().get(model_type)
    if fmt is None:
        return None
    arch = (raw.get("architectures") or [None])[0]
    if arch not in fmt.architectures:
        raise SourceError(
            f"{where}: architectures[0] is {arch!r}; a {model_type!r} checkpoint has {' or '.join(fmt.architectures)}"
        )
    return fmt


def import_checkpoint(
    src_dir: Path,
    out: str | Path,
    fmt: ImportFormat,
    source: str,
    block_size: int | None = None,
    logit_shift: bool = False,
    sampler=None,
    overwrite: bool = False,
    prompt_attention: str | None = None,
    enable_thinking: bool = False,
) -> tuple[Path, list[str]]:
    """Write an opdlm student translated from a checkpoint in ``fmt``.

    Args:
        src_dir: the resolved checkpoint directory.
        out: output directory (atomic: renamed into place when complete).
        source: the source string as given (recorded in ``config.json``).
        block_size: requested B; must equal the declared one when the checkpoint declares it.
        logit_shift: requested; must equal the format's.
        sampler: sampler defaults (``block_size`` is forced to the resolved B).
        prompt_attention: requested; must equal the format's (None: the format's).
        enable_thinking: the chat template's thinking mode, stamped into ``config.json``.

    Returns:
        ``(path, notes)``: the absolute output path and lines for the user (alignment, defaults).

    Raises:
        SourceError: an unknown or inconsistent field (one line naming it).
    """
    from transformers import Qwen3Config

    from opdlm import __version__
    from opdlm.config.sampler import SamplerConfig
    from opdlm.fsutil import atomic_dir
    from opdlm.models.student import verify_student_dir

    where = f"{src_dir}/config.json"
    raw = common.read_json(src_dir / "config.json")
    config_dict = common.qwen3_config_dict(raw, where)
    if prompt_attention is not None and prompt_attention != fmt.prompt_attention:
        raise SourceError(
            f"prompt_attention: {fmt.name} checkpoints read their prompt {fmt.prompt_attention}-wise; "
            f"--prompt-attention says {prompt_attention}"
        )
    if logit_shift != fmt.logit_shift:
        raise SourceError(
            f"logit_shift: {fmt.name} checkpoints use logit_shift={fmt.logit_shift}; --logit-shift says {logit_shift}"
        )

    mask = common.tokenizer_mask(src_dir)
    if mask.value is None:
        raise SourceError(f"{mask.where}: no mask token (neither mask_token nor an added {common.MASK_TOKEN!r})")
    declared_mask = raw.get("mask_token_id")
    if declared_mask is not None and int(declared_mask) != mask.value:
        raise SourceError(f"{where}: mask_token_id is {declared_mask} but {mask.where} gives {mask.value}")
    if mask.value != fmt.engine_mask_id:
        raise SourceError(
            f"mask_token_id: {mask.where} gives {mask.value}; {fmt.name}'s own engine hard-codes {fmt.engine_mask_id}"
        )
    if mask.value >= int(config_dict["vocab_size"]):
        raise SourceError(f"{where}: vocab_size {config_dict['vocab_size']} has no row for mask id {mask.value}")
    eos = raw.get("eos_token_id")
    if mask.value in {raw.get("pad_token_id"), *(eos if isinstance(eos, list) else [eos])}:
        raise SourceError(f"{where}: mask id {mask.value} is also pad or EOS")

    bs = common.resolve_block_size(
        common.declared_block_size(src_dir, raw, fmt.block_size_keys), block_size, fmt.default_block_size, source
    )
    files = common.weight_files(src_dir)
    common.check_qwen3_names(common.tensor_names(files), config_dict, str(src_dir))
    sampler = (sampler or SamplerConfig()).with_overrides(block_size=int(bs.value))

    notes = [f"block_size={bs.value} from {bs.where}", f"mask_token_id={mask.value} from {mask.where}"]
    if fmt.native_alignment == "absolute":
        notes.append(
            f"{fmt.name} aligns blocks to absolute position 0 (prompt and response share a block); opdlm counts "
            f"them back from the response start: the two agree only when the prompt length is a multiple of {bs.value}"
        )
    with atomic_dir(out, overwrite=overwrite, inputs={"--teacher": src_dir}, flag="--out") as tmp:
        common.copy_weights(files, tmp)
        common.copy_tokenizer(src_dir, tmp, mask.value)
        config = Qwen3Config.from_dict(config_dict)
        config.architectures = ["Qwen3ForCausalLM"]
        config.block_size = int(bs.value)
        config.mask_token_id = int(mask.value)
        config.logit_shift = fmt.logit_shift
        config.prompt_attention = fmt.prompt_attention
        config.enable_thinking = bool(enable_thinking)
        config.sampler_defaults = sampler.model_dump()
        config.opdlm_version = __version__
        config.opdlm_converted_from = source
        config.opdlm_imported_format = fmt.name
        config.opdlm_native_block_alignment = fmt.native_alignment
        config.save_pretrained(tmp)
        if (src_dir / "generation_config.json").is_file():
            shutil.copy2(src_dir / "generation_config.json", tmp / "generation_config.json")
        # done only once the output loads: shapes as its config.json says, the mask token where it says
        verify_student_dir(tmp, f"{fmt.name} checkpoint", where=str(src_dir))
    return Path(out).absolute(), notes
