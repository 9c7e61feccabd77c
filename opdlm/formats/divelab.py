"""divelab's released block-diffusion checkpoints: ``OPDLM-*`` and ``Qwen3-*-a2d-init``.

What the format is, as its own files say (snapshots: divelab/OPDLM @3bb8bf60, ZHZisZZ/dllm @ca176752;
model cards huggingface.co/divelab/OPDLM-4B and huggingface.co/divelab/Qwen3-4B-a2d-init):

* ``config.json``: ``model_type: "a2d-qwen3"`` (divelab/OPDLM ``convert_qwen_to_bd3lm.py`` line 74;
  dllm ``dllm/pipelines/a2d/models/qwen3/modeling_qwen3.py`` lines 23-24) with the source Qwen3's
  architecture fields copied over (``convert_qwen_to_bd3lm.py`` lines 59-71), ``vocab_size``
  151936 (line 75), ``architectures`` and ``auto_map`` from dllm's reference BD3LM config (line 57):
  ``A2DQwen3LMHeadModel``, which subclasses ``Qwen3ForCausalLM`` and only swaps the causal mask for
  a padding-only one (``modeling_qwen3.py`` lines 87-108, 137-144), so its weight names are exactly
  Qwen3's and the weights need no change.
* Mask token: ``<|MASK|>`` at id 151669, registered as the tokenizer's ``mask_token`` in
  ``tokenizer_config.json`` (the a2d-init model card, "Mask token registration"); divelab's
  sampler reads ``tokenizer.mask_token_id`` (``sample/bd3lm_rl_rollout.py`` line 257) while its
  JetEngine rollouts hard-code 151669 (lines 614, 677, 1257): the two must agree.
* Block size: the OPDLM model cards state "Block size: 4"; training uses ``block_size: 4``
  (``configs/rl_bd3lm.yaml`` lines 50, 87, 173), the default when a checkpoint states none.
* No logit shift: ``training.student_arm_shift: False`` (``configs/rl_bd3lm.yaml`` line 108).
* Prompt geometry: the prompt is left-padded to a multiple of B (``bd3lm_rl_rollout.py`` lines
  268-274) and block ids are positions // B over that padded layout (lines 184-200): blocks are
  counted back from the response start, bidirectional inside a block, causal across, padding never
  attended, position ids from 0 at the first real token. That is opdlm's ``prompt_attention:
  "block"`` exactly.
"""

from __future__ import annotations

from opdlm.formats.common import Declared, ImportFormat

FORMAT = ImportFormat(
    name="divelab",
    model_types=("a2d-qwen3",),
    architectures=("A2DQwen3LMHeadModel", "A2DQwen3ForCausalLM", "Qwen3ForCausalLM"),
    block_size_keys=("block_size", "bd_size"),
    default_block_size=Declared(4, "divelab's training block size (configs/rl_bd3lm.yaml block_size: 4)"),
    engine_mask_id=151669,
    logit_shift=False,
    prompt_attention="block",
    native_alignment="response",
)
