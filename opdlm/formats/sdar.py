"""JetAstra's SDAR checkpoints (``JetLM/SDAR-*-Chat``): ``model_type: sdar``, ``SDARForCausalLM``.

What the format is, as its own files say (snapshots: JetAstra/SDAR @c2041a83, its modeling code as
vendored in divelab/OPDLM @3bb8bf60 ``models/sdar/``; model card huggingface.co/JetLM/SDAR-1.7B-Chat):

* ``config.json``: ``model_type: "sdar"`` (``models/sdar/configuration_sdar.py`` line 126 of the
  vendored copy), ``architectures: ["SDARForCausalLM"]`` and an ``auto_map`` into the repo's own
  ``configuration_sdar.py`` / ``modeling_sdar.py``. The config carries exactly Qwen3's fields
  (``configuration_sdar.py`` lines 145-203) and no block size.
* Weights: ``SDARForCausalLM`` is Qwen3's network under another name: ``model.embed_tokens``,
  ``model.layers.N.self_attn.{q,k,v,o}_proj`` with per-head ``q_norm``/``k_norm``,
  ``mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head`` (``modeling_sdar.py`` lines 99-110,
  196-229, 502-512, 803-815). They load into ``Qwen3ForCausalLM`` unchanged; SGLang's and LMDeploy's
  SDAR loaders read the same names (see :mod:`opdlm.formats.sglang`, :mod:`opdlm.formats.lmdeploy`).
* Mask token: the tokenizer's ``mask_token`` (``generate.py`` line 271), 151669 (the model card's
  JetEngine example ``mask_token_id=151669``; LMDeploy and SGLang hard-code it).
* Block size: not in ``config.json``; the default models use 4 (README "default model (block
  size=4)", ``generate.py`` line 217 ``--block_length`` default 4); the block-size variants' cards
  state theirs. No logit shift: the denoised block's own logits are sampled (``generate.py`` lines
  132-145).
* Prompt geometry: blocks are aligned to absolute position 0 (``generate.py`` lines 79-92: the
  prompt's full blocks are prefilled block-causally, the trailing partial block is decoded together
  with the first response tokens), and LMDeploy and SGLang serve it that way. opdlm's geometry
  counts blocks back from the response start, so an imported SDAR model is recorded as
  ``prompt_attention: "block"`` with ``opdlm_native_block_alignment: "absolute"``: the two
  alignments coincide exactly when the prompt length is a multiple of B, and differ otherwise.
"""

from __future__ import annotations

from opdlm.formats.common import Declared, ImportFormat

FORMAT = ImportFormat(
    name="sdar",
    model_types=("sdar",),
    architectures=("SDARForCausalLM",),
    block_size_keys=("block_size", "block_length", "dllm_block_length"),
    default_block_size=Declared(4, "SDAR's default block size (JetAstra/SDAR README, generate.py --block_length 4)"),
    engine_mask_id=151669,
    logit_shift=False,
    prompt_attention="block",
    native_alignment="absolute",
)
