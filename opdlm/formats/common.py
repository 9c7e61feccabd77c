"""What every block-diffusion checkpoint import shares: reading its files without running its code.

A released block-diffusion checkpoint (divelab's A2D-Qwen3, JetAstra's SDAR) is a Qwen3 network
with other names on the box: its own ``model_type`` and ``architectures``, an ``auto_map`` into
remote code, a mask token in the tokenizer. Importing one means reading ``config.json``, the
tokenizer files and the safetensors headers as data, checking them against what the format
declares, and writing an ordinary Qwen3 student directory (see :mod:`opdlm.models.convert`) with
the weight files copied byte for byte. Nothing from the checkpoint is imported or executed.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from opdlm.errors import SourceError, quote
from opdlm.fsutil import read_json_object

# Qwen3 architecture fields an imported config must carry (all Qwen3Config arguments).
QWEN3_REQUIRED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "max_position_embeddings",
)
# Keys that point into a checkpoint's own code or name its own class: dropped on import.
REMOTE_CODE_KEYS = ("auto_map", "architectures", "model_type", "transformers_version")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
MASK_TOKEN = "<|MASK|>"


@dataclass(frozen=True)
class Declared:
    """A value a checkpoint declares and where it says so (for error messages)."""

    value: int | str | bool | None
    where: str


@dataclass(frozen=True)
class ImportFormat:
    """What a released format is and what its own code does (cited in the format's module).

    Attributes:
        name: short name, recorded as ``opdlm_imported_format``.
        model_types: ``config.json`` ``model_type`` values of the format.
        architectures: accepted ``architectures[0]`` values.
        block_size_keys: ``config.json`` keys that may declare the block size.
        default_block_size: the block size its training uses when the checkpoint states none.
        engine_mask_id: the mask id its own inference engine hard-codes (the tokenizer must agree).
        logit_shift: whether its models predict token j at position j-1.
        prompt_attention: how its prompt attends ("block": bidirectional in B-blocks).
        native_alignment: where its blocks start: "response" (counted back from the response
            start, which opdlm's geometry expresses) or "absolute" (from position 0, which it
            expresses only when the prompt length is a multiple of B).
    """

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    block_size_keys: tuple[str, ...]
    default_block_size: Declared
    engine_mask_id: int
    logit_shift: bool
    prompt_attention: str
    native_alignment: str


def read_json(path: Path) -> dict:
    """A JSON file as a dict; one line naming the file when it is missing or malformed."""
    return read_json_object(path, SourceError)


# Of the required fields, the ones that are real numbers rather than counts.
QWEN3_FLOAT_FIELDS = ("rms_norm_eps",)


def require_fields(raw: dict, where: str, fields=QWEN3_REQUIRED_FIELDS) -> None:
    """Fail naming the first missing Qwen3 field, or one that is not a number (``"1"`` for a count)."""
    for name in fields:
        value = raw.get(name)
        if value is None:
            raise SourceError(f"{where}: {name} is missing (a Qwen3-architecture field the student needs)")
        numeric = (int, float) if name in QWEN3_FLOAT_FIELDS else (int,)
        if isinstance(value, bool) or not isinstance(value, numeric) or value <= 0:
            kind = "a positive number" if name in QWEN3_FLOAT_FIELDS else "a positive integer"
            raise SourceError(f"{where}: {name} must be {kind}, got {quote(value)} ({type(value).__name__})")


def qwen3_config_dict(raw: dict, where: str) -> dict:
    """The checkpoint's ``config.json`` as a plain Qwen3 config: same numbers, no remote code."""
    require_fields(raw, where)
    if raw.get("use_sliding_window"):
        raise SourceError(f"{where}: use_sliding_window is true; block-diffusion students need full attention")
    out = {k: v for k, v in raw.items() if k not in REMOTE_CODE_KEYS}
    out["model_type"] = "qwen3"
    out["architectures"] = ["Qwen3ForCausalLM"]
    return out


def weight_files(src_dir: Path) -> list[Path]:
    """The safetensors files (and index) to copy; fails when the weights are not safetensors."""
    files = sorted(src_dir.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in src_dir.glob("*.bin")) or ["nothing"]
        raise SourceError(
            f"{src_dir}: no *.safetensors weights (found {', '.join(found)}); only safetensors import byte for byte"
        )
    index = src_dir / "model.safetensors.index.json"
    return files + ([index] if index.is_file() else [])


def tensor_names(files: list[Path]) -> set[str]:
    """Every tensor name in the safetensors files, read from their headers (no tensor is loaded)."""
    from safetensors import safe_open

    names: set[str] = set()
    for path in files:
        if path.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(path), framework="pt") as fh:
                names.update(fh.keys())
        except Exception as exc:  # a truncated or non-safetensors file: one line, with the cause
            raise SourceError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return names


def check_qwen3_names(names: set[str], config_dict: dict, where: str) -> None:
    """Fail unless the tensor names are exactly Qwen3ForCausalLM's (lm_head may be tied away)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**{k: v for k, v in config_dict.items() if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        expected = set(Qwen3ForCausalLM(config).state_dict())
    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(names - expected)
    missing = sorted(expected - names - optional)
    if unexpected:
        raise SourceError(
            f"{where}: weight {unexpected[0]!r} is not a Qwen3 weight name ({len(unexpected)} unexpected)"
        )
    if missing:
        raise SourceError(f"{where}: weight {missing[0]!r} is missing ({len(missing)} missing)")


def _added_tokens(src_dir: Path) -> tuple[dict[str, int], str]:
    """Added tokens by content -> id, from ``tokenizer_config.json``'s ``added_tokens_decoder`` (what
    transformers 4 writes) and ``tokenizer.json``'s ``added_tokens`` (where transformers 5 keeps them
    and writes no decoder). Returns the map and where it came from.

    Raises:
        SourceError: the two files give one token two ids.
    """
    cfg = read_json(src_dir / "tokenizer_config.json")
    decoder = cfg.get("added_tokens_decoder") or {}
    found = {str(v.get("content")): int(k) for k, v in decoder.items() if isinstance(v, dict)}
    sources = ["added_tokens_decoder"] if found else []
    tokenizer_json = src_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        listed = read_json(tokenizer_json).get("added_tokens") or []
        for token in listed:
            if not isinstance(token, dict) or "content" not in token or "id" not in token:
                continue
            content, token_id = str(token["content"]), int(token["id"])
            if found.get(content, token_id) != token_id:
                raise SourceError(
                    f"{src_dir.name}: added token {content!r} is id {found[content]} in tokenizer_config.json "
                    f"but {token_id} in tokenizer.json"
                )
            found[content] = token_id
        if listed:
            sources.append("tokenizer.json added_tokens")
    return found, " / ".join(sources) or "no added tokens"


def tokenizer_mask(src_dir: Path) -> Declared:
    """The mask token id the tokenizer files declare, or ``Declared(None, ...)``.

    Reads ``tokenizer_config.json``'s ``mask_token`` (a string or an AddedToken dict) and resolves
    it through the added tokens (:func:`_added_tokens`: the config's ``added_tokens_decoder`` or
    ``tokenizer.json``'s ``added_tokens``, as transformers itself does); failing a ``mask_token``,
    an added token spelled ``<|MASK|>``.

    Raises:
        SourceError: ``mask_token`` names a token that is in neither file.
    """
    where = f"{src_dir.name}/tokenizer_config.json"
    cfg = read_json(src_dir / "tokenizer_config.json")
    by_content, read_from = _added_tokens(src_dir)
    mask = cfg.get("mask_token")
    mask = mask.get("content") if isinstance(mask, dict) else mask
    if mask is not None:
        if mask not in by_content:
            raise SourceError(
                f"{where}: mask_token {mask!r} is not an added token (neither tokenizer_config.json's "
                "added_tokens_decoder nor tokenizer.json's added_tokens lists it)"
            )
        return Declared(by_content[mask], f"{where} mask_token {mask!r} ({read_from})")
    if MASK_TOKEN in by_content:
        return Declared(by_content[MASK_TOKEN], f"{where} added token {MASK_TOKEN!r} (not registered as mask_token)")
    return Declared(None, where)


def copy_tokenizer(src_dir: Path, dst: Path, mask_id: int) -> None:
    """Copy the tokenizer files, strip remote code from them and register the mask token.

    A mask already registered as ``mask_token`` (as released checkpoints ship it) needs only the
    copy; an added ``<|MASK|>`` that is not registered is registered through transformers.

    Raises:
        SourceError: the tokenizer needs a class transformers does not have, or the mask token
            does not come out at ``mask_id``.
    """
    import transformers
    from transformers import AutoTokenizer

    for name in TOKENIZER_FILES:
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, dst / name)
    cfg = read_json(dst / "tokenizer_config.json")
    cfg.pop("auto_map", None)
    cls = str(cfg.get("tokenizer_class") or "")
    if cls and not hasattr(transformers, cls) and not hasattr(transformers, cls.removesuffix("Fast")):
        raise SourceError(f"{src_dir.name}/tokenizer_config.json: tokenizer_class {cls!r} exists only as remote code")
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    if cfg.get("mask_token") is not None:  # registered; tokenizer_mask() resolved it to mask_id
        return
    try:
        tokenizer = AutoTokenizer.from_pretrained(dst, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"could not load the tokenizer of {src_dir}: {str(exc).splitlines()[0]}") from None
    content = tokenizer.convert_ids_to_tokens(mask_id)
    if tokenizer.mask_token_id != mask_id:
        tokenizer.add_special_tokens({"mask_token": content or MASK_TOKEN})
    if tokenizer.mask_token_id != mask_id:
        raise SourceError(
            f"{src_dir.name}: the tokenizer's mask token has id {tokenizer.mask_token_id}, expected {mask_id}"
        )
    for name in TOKENIZER_FILES:
        (dst / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(dst)


_README_BLOCK = re.compile(r"block[ _-]?(?:size|length)\**\s*[:=]\**\s*(\d+)", re.IGNORECASE)


def declared_block_size(src_dir: Path, raw: dict, config_keys: tuple[str, ...]) -> Declared:
    """The block size the checkpoint states: a ``config.json`` key, else its model card (README.md)."""
    for key in config_keys:
        if raw.get(key) is not None:
            return Declared(int(raw[key]), f"config.json {key}")
    readme = src_dir / "README.md"
    if readme.is_file():
        found = _README_BLOCK.search(readme.read_text(errors="replace"))
        if found:
            return Declared(int(found.group(1)), f"README.md ({found.group(0).strip()!r})")
    return Declared(None, "config.json and README.md")


def resolve_block_size(declared: Declared, requested: int | None, default: Declared, source: str) -> Declared:
    """The block size to use: the declared one (a different request fails), else the request, else ``default``."""
    if declared.value is not None:
        if requested is not None and requested != declared.value:
            raise SourceError(
                f"block_size: {source} declares {declared.value} ({declared.where}); --block-size says {requested}"
            )
        return declared
    if requested is not None:
        return Declared(requested, "--block-size")
    return default


def copy_weights(files: list[Path], dst: Path) -> None:
    """Copy the weight files unchanged (the bytes are the checkpoint's)."""
    for path in files:
        shutil.copy2(path, dst / path.name)
