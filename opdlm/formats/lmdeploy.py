"""What LMDeploy reads to serve an SDAR-format block-diffusion model, and how our sampler maps onto it.

Sources (InternLM/lmdeploy snapshot @1263d5cd, Aug 2026):

* ``model_type``: ``lmdeploy/pytorch/configurations/sdar.py`` lines 8-10 pick the SDAR config
  builder for ``model_type in ['sdar', 'sdar_moe']``; line 16 hard-codes ``dllm_mask_token =
  151669``; line 17 sets ``model_paradigm = 'dllm'``. An unknown ``model_type`` without ``auto_map``
  still loads: ``lmdeploy/hf_configs/__init__.py`` lines 23-39 fall back to
  ``PretrainedConfig.from_pretrained``, so no remote code is needed.
* Model class by ``architectures[0]``: ``lmdeploy/archs.py`` lines 153-154 and
  ``lmdeploy/pytorch/models/module_map.py`` line 305 (``SDARForCausalLM``).
* Config fields: ``lmdeploy/pytorch/configurations/default.py`` lines 17-43 (``head_dim``,
  ``num_attention_heads``, ``num_key_value_heads``, ``hidden_size``, ``num_hidden_layers``,
  ``bos_token_id``, ``eos_token_id``, ``vocab_size``; ``use_sliding_window`` *defaults to True when
  absent*, line 24, so it must be written as false); ``lmdeploy/pytorch/models/sdar.py`` lines 36-72
  (``attention_bias``, ``sliding_window``, ``rms_norm_eps``), 128 (``intermediate_size``), 223-239
  (``pad_token_id``, ``vocab_size``, ``num_hidden_layers``), 345 and 399 (``tie_word_embeddings``);
  RoPE: ``lmdeploy/pytorch/nn/rotary_embedding.py`` lines 20-26 and 216-234 (``rope_parameters``,
  else ``rope_scaling`` and ``rope_theta`` with default 10000). Weights: Qwen3 names, q/k/v and
  gate/up stacked at load (``models/sdar.py`` lines 381-411).
* Engine options (``lmdeploy/messages.py`` lines 451-455, 503-506; CLI ``lmdeploy/cli/utils.py``
  lines 752-780, ``lmdeploy/cli/serve.py`` lines 113-116): ``dllm_block_length`` (default: the
  model's, else 4, ``lmdeploy/pytorch/strategies/dllm/__init__.py`` lines 32-50),
  ``dllm_denoising_steps`` (default: the block length), ``dllm_unmasking_strategy``
  (``low_confidence_dynamic`` | ``low_confidence_static`` | ``sequential``),
  ``dllm_confidence_threshold`` (default 0.85).
* Unmasking (``lmdeploy/pytorch/strategies/dllm/unmasking.py``): static commits ``block_length //
  denoising_steps`` top-confidence positions every step (lines 24-49); dynamic commits the top one
  plus every position with confidence ``>= threshold`` (lines 51-67).
* Alignment: a prompt is padded with mask tokens to a multiple of the block length
  (``lmdeploy/pytorch/strategies/dllm/sequence.py`` lines 107-118): blocks are aligned to absolute
  position 0, the first response tokens share the prompt's last block.
* HTTP: ``POST /generate`` takes ``input_ids`` and returns ``output_ids``
  (``lmdeploy/serve/openai/endpoints/generate.py`` line 74; ``protocol.py`` lines 574-619).

Mapping from opdlm's sampler (METHOD §3): static with B divisible by the steps is the same schedule
(ours puts a remainder on the earliest steps, LMDeploy's cannot, so B % steps != 0 is refused);
dynamic matches only with a quota of one token per step (steps == B), and LMDeploy's ``>=`` differs
from our ``>`` only for a confidence exactly at the threshold.
"""

from __future__ import annotations

from opdlm.formats.serving import Engine, Refusal

MASK_ID = 151669

CONFIG_FIELDS: dict[str, tuple[object, str]] = {
    "model_type": ("sdar", "pytorch/configurations/sdar.py lines 8-10"),
    "architectures": (["SDARForCausalLM"], "archs.py lines 153-154; pytorch/models/module_map.py line 305"),
    "hidden_size": (None, "pytorch/configurations/default.py line 33"),
    "num_hidden_layers": (None, "pytorch/configurations/default.py line 34"),
    "num_attention_heads": (None, "pytorch/configurations/default.py line 35"),
    "num_key_value_heads": (None, "pytorch/configurations/default.py line 23"),
    "head_dim": (None, "pytorch/configurations/default.py lines 17-18"),
    "bos_token_id": (None, "pytorch/configurations/default.py line 37 (may be null)"),
    "eos_token_id": (None, "pytorch/configurations/default.py line 38"),
    "vocab_size": (None, "pytorch/configurations/default.py line 43; pytorch/models/sdar.py line 224"),
    "use_sliding_window": (False, "pytorch/configurations/default.py line 24 (absent means True)"),
    "sliding_window": (None, "pytorch/models/sdar.py line 57 (may be null)"),
    "attention_bias": (False, "pytorch/models/sdar.py lines 41, 64"),
    "rms_norm_eps": (None, "pytorch/models/sdar.py lines 71-72"),
    "intermediate_size": (None, "pytorch/models/sdar.py line 128"),
    "pad_token_id": (None, "pytorch/models/sdar.py line 223"),
    "tie_word_embeddings": (None, "pytorch/models/sdar.py lines 345, 399"),
    "rope_theta": (None, "pytorch/nn/rotary_embedding.py lines 216-222"),
    "max_position_embeddings": (None, "pytorch/nn/rotary_embedding.py line 232"),
}


def _settings(sampler) -> tuple[dict, list[str]]:
    """The PytorchEngineConfig ``dllm_*`` options for ``sampler``; raises :class:`Refusal` when inexpressible."""
    b, steps = sampler.block_size, sampler.denoise_steps_per_block
    if sampler.remasking == "static" and b % steps:
        raise Refusal(
            f"denoise_steps_per_block: LMDeploy's static unmasking commits block_length // steps = {b // steps} "
            f"per step; {steps} steps for block size {b} leaves a remainder it cannot schedule"
        )
    if sampler.remasking == "dynamic" and steps != b:
        raise Refusal(
            f"denoise_steps_per_block: LMDeploy's dynamic unmasking guarantees one token per step; the "
            f"student's sampler guarantees {b // steps}+ (set --steps-per-block {b})"
        )
    options = {
        "dllm_block_length": b,
        "dllm_denoising_steps": steps,
        "dllm_unmasking_strategy": f"low_confidence_{sampler.remasking}",
        "dllm_confidence_threshold": sampler.threshold,
    }
    notes = [f"remasking={sampler.remasking} -> dllm_unmasking_strategy low_confidence_{sampler.remasking}"]
    if sampler.temperature > 0:
        notes.append(
            f"temperature {sampler.temperature}: pass it per request (GenerationConfig / /generate temperature)"
        )
    return options, notes


def launch_command(model_dir: str, options_path: str, options: dict) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
    return f"lmdeploy serve api_server {model_dir} --backend pytorch {flags} --server-port 23333"


ENGINE = Engine(
    name="lmdeploy",
    mask_id=MASK_ID,
    model_type="sdar",
    config_fields=CONFIG_FIELDS,
    settings=_settings,
    settings_file="lmdeploy_engine.json",
    launch=launch_command,
)
