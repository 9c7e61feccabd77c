"""Tiny causal LMs in the real Hugging Face formats, built locally.

Tests and benchmarks use these so they exercise exactly the code path a Qwen3-4B from the hub takes,
in seconds and without a network.
"""

from __future__ import annotations

import string
from pathlib import Path

PAD, EOS, BOS = "<|pad|>", "<|endoftext|>", "<|startoftext|>"
CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"

SUPPORTED_TINY_ARCHS = ("qwen3", "qwen2", "llama", "mistral")


def build_char_tokenizer(extra_special: tuple[str, ...] = ()):
    """A character-level ``PreTrainedTokenizerFast`` with pad and EOS tokens.

    Returns:
        The tokenizer; ids 0.. are the special tokens, then one id per character of ``CHARS``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, BOS, *extra_special]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    vocab["<|unk|>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token="<|unk|>"
    )
    tok.add_special_tokens({"additional_special_tokens": list(extra_special)}) if extra_special else None
    return tok


def tiny_config(arch: str = "qwen3", vocab_size: int = 128, hidden_size: int = 32, num_layers: int = 2, **kw):
    """A tiny config of the given family with ``vocab_size`` embedding rows."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    common.update(kw)
    if arch == "qwen3":
        return transformers.Qwen3Config(head_dim=hidden_size // 4, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "mistral":
        return transformers.MistralConfig(sliding_window=None, **common)
    raise ValueError(f"unknown tiny arch {arch!r}; choose from {SUPPORTED_TINY_ARCHS}")


def make_tiny_causal_lm(
    out_dir: str | Path,
    arch: str = "qwen3",
    *,
    padded_rows: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    tokenizer=None,
    init_std: float | None = None,
) -> Path:
    """Save a randomly initialised tiny causal LM plus tokenizer as an ordinary HF directory.

    Args:
        out_dir: where to save.
        arch: one of ``SUPPORTED_TINY_ARCHS``.
        padded_rows: embedding rows beyond the tokenizer's vocabulary (Qwen3 pads 151,669 -> 151,936);
            0 forces conversion to resize the embeddings.
        init_std: weight init std; larger values give peakier (more confident) random models.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tok = tokenizer if tokenizer is not None else build_char_tokenizer()
    cfg_kw = {} if init_std is None else {"initializer_range": init_std}
    cfg = tiny_config(
        arch,
        vocab_size=len(tok) + padded_rows,
        hidden_size=hidden_size,
        num_layers=num_layers,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        **cfg_kw,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
