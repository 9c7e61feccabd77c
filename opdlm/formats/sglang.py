"""What SGLang reads to serve an SDAR-format block-diffusion model, and how our sampler maps onto it.

Sources (sgl-project/sglang; the full snapshot is 1.2 GB, over the fetch limit, so files were read
from the stored index at the commits named):

* Model class by ``architectures[0]``: ``python/sglang/srt/models/sdar.py`` @0b142c7b defines
  ``SDARForCausalLM`` (``EntryClass = SDARForCausalLM``, last line). Its loader reads Qwen3 weight
  names (``model.layers.N.self_attn.{q,k,v}_proj`` stacked into ``qkv_proj``, ``mlp.{gate,up}_proj``
  into ``gate_up_proj``; ``load_weights``) and these config fields: ``hidden_size``,
  ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``attention_bias``,
  ``rms_norm_eps``, ``intermediate_size``, ``num_hidden_layers``, ``vocab_size``,
  ``tie_word_embeddings``, ``max_position_embeddings`` and ``rope_theta`` / ``rope_scaling`` through
  ``getattr`` with defaults 10000.0 / None (``SDARAttention.__init__``), so ``rope_theta`` must be at
  the top level of ``config.json``.
* Block size and mask id: SGLang's DLLM config table gives ``SDARForCausalLM`` ``block_size: 4``,
  ``mask_id: 151669`` (pull request sgl-project/sglang#18318, "Register SDAR-specific DLLM config in
  dllm/config.py (block_size=4, mask_id=151669)"; the same table appears in the SDAR-era
  ``python/sglang/srt/dllm/config.py`` ``DllmConfig.from_server_args``). The mask id is hard-coded;
  ``block_size`` is overridden by the ``--dllm-algorithm-config`` YAML
  (``algorithm_config.get("block_size", block_size)``, same function; also in the stored
  @454e84da version). The config's own ``model_type`` is not consulted, so the export keeps
  ``model_type: qwen3`` and needs no remote code.
* Algorithm ``LowConfidence`` (``python/sglang/srt/dllm/algorithm/low_confidence.py`` @0564b521):
  argmax tokens; each step commits every masked position with confidence ``> threshold`` (YAML
  ``threshold``, default 0.95), else the single most confident one. It never samples.
* Alignment: a request whose prompt is shorter than a block starts in decode, a longer one in
  prefill, and the cached prefix must be a whole number of blocks (``python/sglang/srt/dllm/mixin/
  req.py`` @0242fe04, ``init_diffusion_llm`` and the ``prefix_len % block_size == 0`` assertion in
  ``_update_block_offset_for_dllm``): blocks are aligned to absolute position 0.

Mapping from opdlm's sampler (METHOD §3): ``LowConfidence`` with threshold t is our ``dynamic``
remasking at threshold t with a static quota of one token per step (``denoise_steps_per_block ==
block_size``); with threshold 1.0 nothing passes ``>`` and it is our ``static`` one-per-step
schedule. Any other quota, or a temperature above 0, cannot be expressed and is refused.
"""

from __future__ import annotations

from opdlm.formats.serving import Engine, Refusal

MASK_ID = 151669

# config.json field -> required value (None: must be present, any value), with where SGLang reads it.
CONFIG_FIELDS: dict[str, tuple[object, str]] = {
    "architectures": (["SDARForCausalLM"], "model registry by architectures[0]; models/sdar.py EntryClass"),
    "hidden_size": (None, "models/sdar.py SDARAttention / SDARModel"),
    "num_attention_heads": (None, "models/sdar.py SDARAttention"),
    "num_key_value_heads": (None, "models/sdar.py SDARAttention"),
    "head_dim": (None, "models/sdar.py SDARAttention (getattr, else hidden_size // heads)"),
    "attention_bias": (False, "models/sdar.py SDARAttention (getattr, default False)"),
    "rms_norm_eps": (None, "models/sdar.py SDARAttention q_norm/k_norm, SDARBlock"),
    "intermediate_size": (None, "models/sdar.py SDARMLP"),
    "num_hidden_layers": (None, "models/sdar.py SDARModel make_layers"),
    "vocab_size": (None, "models/sdar.py VocabParallelEmbedding / ParallelLMHead"),
    "tie_word_embeddings": (None, "models/sdar.py SDARForCausalLM lm_head"),
    "max_position_embeddings": (None, "models/sdar.py SDARAttention get_rope"),
    "rope_theta": (None, "models/sdar.py SDARAttention (getattr, default 10000.0)"),
    "rope_scaling": (None, "models/sdar.py SDARAttention (getattr, default None)"),
}


def _settings(sampler) -> tuple[dict, list[str]]:
    """The ``--dllm-algorithm-config`` YAML for ``sampler``; raises :class:`Refusal` when inexpressible."""
    if sampler.denoise_steps_per_block != sampler.block_size:
        raise Refusal(
            f"denoise_steps_per_block: SGLang's LowConfidence commits one token per step when none passes the "
            f"threshold; the student's sampler commits {sampler.block_size // sampler.denoise_steps_per_block}+ "
            f"(set --steps-per-block {sampler.block_size})"
        )
    if sampler.temperature > 0:
        raise Refusal(
            f"temperature: SGLang's LowConfidence decodes by argmax only; the student's sampler has "
            f"temperature {sampler.temperature} (pass --temperature 0)"
        )
    threshold = 1.0 if sampler.remasking == "static" else sampler.threshold
    return {"block_size": sampler.block_size, "threshold": threshold}, [
        f"remasking={sampler.remasking} -> LowConfidence threshold {threshold} (commits > threshold, else the top one)",
    ]


def launch_command(model_dir: str, yaml_path: str, settings: dict) -> str:
    return (
        f"python -m sglang.launch_server --model-path {model_dir} --dllm-algorithm LowConfidence "
        f"--dllm-algorithm-config {yaml_path} --attention-backend flashinfer --port 30000"
    )


ENGINE = Engine(
    name="sglang",
    mask_id=MASK_ID,
    model_type="qwen3",
    config_fields=CONFIG_FIELDS,
    settings=_settings,
    settings_file="dllm_algorithm.yaml",
    launch=launch_command,
)
