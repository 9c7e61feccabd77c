"""Loading models and the student's block-causal forward.

A converted student is an ordinary Hugging Face causal LM directory whose ``config.json`` carries
``block_size``, ``mask_token_id``, ``logit_shift``, ``prompt_attention`` (``block`` | ``causal``; a
config.json without it is ``causal``, what students converted before the key existed were trained
with), ``enable_thinking`` (the chat template's thinking mode every prompt is rendered with; absent
= false) and ``sampler_defaults``. Its architecture is
the teacher's, unchanged: the block-causal behaviour comes entirely from the 4-D masks and position
ids built by :mod:`opdlm.models.geometry`, so no ``trust_remote_code`` is ever needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from opdlm.config.request import ModelLimits
from opdlm.config.sampler import SamplerConfig
from opdlm.errors import SourceError
from opdlm.models.attention import BACKENDS, TEACHER_BACKENDS, attention_mask, check_backend, default_backend
from opdlm.models.geometry import LEGACY_PROMPT_ATTENTION, Geometry, check_prompt_attention
from opdlm.progress import library_bars


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when present, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SourceError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SourceError(
            f"device {device!r} asked for, but this machine has no usable CUDA GPU; use --device cpu or auto"
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` -> bf16 on cuda, fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in table:
        raise SourceError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(table)}")
    return table[dtype]


_RECONVERT = "convert the teacher again with `opdlm convert` (it registers a separate mask token)"


@dataclass
class StudentMeta:
    """What the sampler and trainer need to know about a converted student.

    Attributes:
        prompt_attention: ``block`` (prompt bidirectional inside B-blocks counted back from the
            response start, the paper's) or ``causal``; see :mod:`opdlm.models.geometry`.
        enable_thinking: the chat template's ``enable_thinking`` for every prompt this model sees
            (:func:`opdlm.data.prompting.format_prompt`).
    """

    block_size: int
    mask_token_id: int
    logit_shift: bool
    eos_token_ids: list[int]
    pad_token_id: int
    sampler_defaults: SamplerConfig = field(default_factory=SamplerConfig)
    prompt_attention: str = LEGACY_PROMPT_ATTENTION
    enable_thinking: bool = False

    @classmethod
    def from_config(cls, config, tokenizer, where: str = "model") -> StudentMeta:
        missing = [k for k in ("block_size", "mask_token_id") if getattr(config, k, None) is None]
        if missing:
            raise SourceError(
                f"{where} is not a converted student (config.json lacks {', '.join(missing)}); run `opdlm convert` "
                "first"
            )
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(int(tokenizer.eos_token_id))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        mask, rows = int(config.mask_token_id), config.get_text_config().vocab_size
        if mask in eos_ids or mask == pad:
            # the sampler would read every committed mask as the end of the text (or as padding)
            raise SourceError(
                f"{where}: mask_token_id {mask} is also its {'EOS' if mask in eos_ids else 'pad'} token; {_RECONVERT}"
            )
        if not 0 <= mask < rows:
            raise SourceError(
                f"{where}: mask_token_id {mask} is outside its {rows}-row embedding; convert the teacher again"
            )
        defaults = getattr(config, "sampler_defaults", None) or {}
        prompt_attention = getattr(config, "prompt_attention", None) or LEGACY_PROMPT_ATTENTION
        try:
            check_prompt_attention(prompt_attention)
        except ValueError as exc:
            raise SourceError(f"{where}/config.json: {exc}") from None
        enable_thinking = getattr(config, "enable_thinking", False)
        if not isinstance(enable_thinking, bool):
            raise SourceError(f"{where}/config.json: enable_thinking must be true or false (got {enable_thinking!r})")
        return cls(
            block_size=int(config.block_size),
            mask_token_id=mask,
            logit_shift=bool(getattr(config, "logit_shift", False)),
            eos_token_ids=eos_ids,
            pad_token_id=int(pad),
            sampler_defaults=SamplerConfig.model_validate({**defaults, "block_size": int(config.block_size)}),
            prompt_attention=prompt_attention,
            enable_thinking=enable_thinking,
        )


def stored_sampler_defaults(path: str | Path) -> SamplerConfig:
    """A converted student's stored sampler defaults, read from ``config.json`` without loading the model.

    Lets a command validate its sampler options in a second, before a model load that may take minutes.
    """
    import json

    from opdlm.models.model_dir import check_model_dir

    path = check_model_dir(Path(path), "student")
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}/config.json is not valid JSON: {exc}") from None
    missing = [k for k in ("block_size", "mask_token_id") if raw.get(k) is None]
    if missing:
        raise SourceError(
            f"{path} is not a converted student (config.json lacks {', '.join(missing)}); run `opdlm convert` first"
        )
    eos = raw.get("eos_token_id")
    if raw["mask_token_id"] in (eos if isinstance(eos, list) else [eos]):  # (the tokenizer's EOS is checked on load)
        raise SourceError(f"{path}: mask_token_id {raw['mask_token_id']} is also its EOS token; {_RECONVERT}")
    return SamplerConfig.model_validate({**(raw.get("sampler_defaults") or {}), "block_size": int(raw["block_size"])})


def model_limits(path: str | Path, tokenizer=None) -> ModelLimits:
    """What a request to the model at ``path`` may ask, read from its ``config.json`` (and tokenizer).

    ``max_position_embeddings`` (of the text config in a multimodal one) bounds prompt plus response;
    a student (``block_size`` and ``mask_token_id`` present) lays its response out in whole blocks.
    With ``tokenizer``, the longest token of its vocabulary bounds a prompt's characters: byte-level
    BPE writes each byte of a token as one character, so no token decodes to more characters than
    its vocabulary entry has.

    Raises:
        SourceError: ``config.json`` is missing, unreadable or has no usable ``max_position_embeddings``.
    """
    import json

    from opdlm.fsutil import read_json_object

    path = Path(path)
    config = read_json_object(path / "config.json", SourceError)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    positions = text.get("max_position_embeddings", config.get("max_position_embeddings"))
    if not isinstance(positions, int) or isinstance(positions, bool) or positions < 2:
        raise SourceError(
            f"{path}/config.json: max_position_embeddings must be an integer >= 2 (got {json.dumps(positions)[:40]})"
        )
    block_causal = config.get("block_size") is not None and config.get("mask_token_id") is not None
    max_token_chars = None
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        max_token_chars = max((len(t) for t in vocab), default=None) or None
    return ModelLimits(positions=positions, block_causal=block_causal, max_token_chars=max_token_chars)


def load_causal_lm(path: str | Path, device: str = "auto", dtype: str = "auto", backend: str | None = None):
    """Load any causal LM directory with the chosen attention backend. Returns ``(model, tokenizer)``.

    ``flash_attention_2`` is accepted here for plain causal use (the teacher); a student's block
    masks need one of ``BACKENDS``.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opdlm.models.model_dir import check_weights_match_config

    path = Path(path)
    dev = resolve_device(device)
    backend = check_backend(backend or default_backend(dev), TEACHER_BACKENDS)
    check_weights_match_config(path)  # a missing shard or sizes that contradict the weights: one line, not a load
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with library_bars():  # transformers' "Loading weights" bar: only where our own bars are shown
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=resolve_dtype(dtype, dev), attn_implementation=backend
            )
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: weights corrupt past their header
        raise SourceError(f"could not load model from {path}: {str(exc).splitlines()[0]}") from None
    model.to(dev).eval()
    return model, tokenizer


def verify_student_dir(path: str | Path, what: str = "student", where: str | None = None) -> StudentMeta:
    """Check that ``path`` is a student that loads, without loading its weights.

    Its safetensors shapes match what its ``config.json`` builds
    (:func:`opdlm.models.model_dir.check_weights_match_config`), its tokenizer loads, and config and
    tokenizer together describe a block-diffusion student (:meth:`StudentMeta.from_config`: block
    size, a mask token distinct from EOS and pad, inside the embedding). Conversion and import run
    this on their output before publishing it, and export on its input.

    Args:
        where: how messages name the directory (default ``path``).

    Raises:
        SourceError: one line naming what is wrong.
    """
    from transformers import AutoConfig, AutoTokenizer

    from opdlm.models.model_dir import check_weights_match_config

    path = Path(path)
    shown = where or str(path)
    check_weights_match_config(path, what, shown)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading here would stop every later load
        first = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), type(exc).__name__)
        raise SourceError(f"{what} {shown} does not load: {first[:300]}") from None
    meta = StudentMeta.from_config(config, tokenizer, where=shown)
    if tokenizer.mask_token_id is not None and tokenizer.mask_token_id != meta.mask_token_id:
        raise SourceError(
            f"{what} {shown}: its tokenizer loads mask token {tokenizer.mask_token!r} as id {tokenizer.mask_token_id} "
            f"but config.json's mask_token_id is {meta.mask_token_id}"
        )
    return meta


@dataclass
class Student:
    """A loaded student: model, tokenizer, its metadata and the attention backend in use."""

    model: torch.nn.Module
    tokenizer: object
    meta: StudentMeta
    backend: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def load_student(path: str | Path, device: str = "auto", dtype: str = "auto", backend: str | None = None) -> Student:
    """Load a converted student directory (see :func:`opdlm.sources.convert.convert_teacher`)."""
    from opdlm.models.model_dir import check_model_dir

    path = check_model_dir(Path(path), "student")
    if backend is not None:
        check_backend(backend, BACKENDS)
    model, tokenizer = load_causal_lm(path, device, dtype, backend)
    meta = StudentMeta.from_config(model.config, tokenizer, where=str(path))
    return Student(model, tokenizer, meta, model.config._attn_implementation)


def block_forward(
    model: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    geom: Geometry,
    backend: str,
    q_start: int,
    q_end: int,
    cache=None,
    logits_to_keep: int = 0,
    mask=None,
) -> torch.Tensor:
    """Forward tokens ``[q_start, q_end)`` against keys ``[0, q_end)`` under the block-causal mask.

    Keys before ``q_start`` must already be in ``cache`` (or ``q_start`` is 0). The new keys are
    appended to ``cache``; callers crop it back to the committed prefix.

    Args:
        input_ids_BT: the whole layout's token ids; only ``[:, q_start:q_end]`` is read.
        logits_to_keep: compute logits for only the last n query positions (0 = all).
        mask: a precomputed mask for exactly this query/key range (built here when None).

    Returns:
        logits ``(B, Q', V)`` for the kept query positions.
    """
    if mask is None:
        dtype = next(model.parameters()).dtype
        mask = attention_mask(geom, backend, dtype, q_start=q_start, q_end=q_end, k_end=q_end)
    out = model(
        input_ids=input_ids_BT[:, q_start:q_end],
        attention_mask=mask,
        position_ids=geom.position_ids_BT[:, q_start:q_end],
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=logits_to_keep,
    )
    return out.logits
