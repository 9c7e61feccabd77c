"""The sampler's own forward pass for Qwen3 and Llama decoders: the same math as Hugging Face's, fewer calls.

A block-diffusion decode step is a forward of a few query positions per row (``W`` = 4 or 8) against
a KV cache. At that size a Hugging Face forward spends much of its time outside arithmetic: module
calls, keyword plumbing, the rotary embedding recomputed for every call, three projections where
one would do (measured: a 4-layer, 128-wide student's batch-16 step took 4.7-5.0 ms, about what a
whole autoregressive ``generate`` step over 8x fewer positions takes). :class:`DecodeForward` runs
the same layers with the same arithmetic in fewer calls:

* one projection for queries, keys and values, and one for the MLP's gate and up, from weights
  concatenated once per decode (:meth:`DecodeForward.bind` re-concatenates only when a parameter
  changed, so a student under training is always current);
* RMSNorm as Hugging Face computes it (float32, cast back, then the weight), Qwen3's query and key
  head norms in one call;
* cos and sin looked up from a table built by the model's own rotary module (so every static RoPE
  variant is reproduced), and the rotation done on queries and keys at once as
  ``x * cos + roll(x, D/2) * [-sin, sin]``: the same products as ``rotate_half``;
* one ``scaled_dot_product_attention`` per layer, grouped-query heads through ``enable_gqa`` instead
  of copying keys per head;
* per-position work (norms, projections, rotary, MLP) only on the valid positions, packed; attention
  alone on the padded ``(S, H, W, D)`` layout;
* in the last layer, only the positions whose logits are kept go on once their keys are stored.

The layers are one pure function, :func:`decode_layers`, run through TorchScript where it compiles
(:func:`opdlm.jit.script_or_eager`: the same function eagerly where it does not). It writes into the same
:class:`~opdlm.sampling.row_cache.RowKVCache` as a Hugging Face forward (by the cache's
:meth:`~opdlm.sampling.row_cache.RowKVCache.write_plan`), so either forward may take any step.
Identity against the Hugging Face forward is tested (``tests/test_decode_forward.py``), and
:func:`fused_forward_unsupported` names the cases it does not cover, in which the sampler uses the
model's own forward (and under autocast, whose casts apply to the model's modules).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from opdlm.jit import script_or_eager

SUPPORTED_MODEL_TYPES = ("qwen3", "llama")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_ACTIVATIONS = ("silu", "gelu", "relu")  # decode_layers' activation codes 0, 1, 2


def fused_forward_unsupported(model, backend: str) -> str | None:
    """Why :class:`DecodeForward` cannot stand in for ``model``'s forward, or None when it can."""
    cfg = model.config
    if backend != "sdpa":
        return f"attention backend {backend!r} (the sampler's forward takes the sdpa mask)"
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {cfg.model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if cfg.hidden_act not in _ACTIVATIONS:
        return f"activation {cfg.hidden_act!r}"
    rope = getattr(cfg, "rope_parameters", None) or {"rope_type": "default"}
    if rope.get("rope_type", "default") not in STATIC_ROPE_TYPES:
        return f"RoPE type {rope.get('rope_type')!r} (its frequencies depend on the sequence length)"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window layers"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return f"pretraining_tp {cfg.pretraining_tp}"
    # ZeRO-3 keeps each rank's parameters partitioned until a module hook gathers them
    if any(hasattr(p, "ds_numel") or p.numel() == 0 for p in model.parameters()):
        return "partitioned (ZeRO-3) parameters"
    return None


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Hugging Face's RMSNorm, the same float ops in the same order: ``x32 * rsqrt(mean(x32^2) + eps)``,
    cast back to ``x``'s dtype, times the weight (the in-place steps work on the small ``(..., 1)`` tensor)."""
    x32 = x.float()
    return (x32 * (x32 * x32).mean(-1, keepdim=True).add_(eps).rsqrt_()).to(x.dtype) * weight


def write_kv(
    key_cache: Tensor,
    value_cache: Tensor,
    k_SKWD: Tensor,
    v_SKWD: Tensor,
    mode: int,
    index: Tensor,
    start: int,
    key_end: int,
) -> tuple[Tensor, Tensor]:
    """Store a forward's new keys and values in ``(S, K, C, D)`` caches by a write plan; return the
    ``(S, K, T, D)`` keys and values its queries attend to.

    The plan (:meth:`opdlm.sampling.row_cache.RowKVCache.write_plan`): mode 0, a prefill of the cache
    rows ``index`` at columns ``[0, W)``, which attend to their own new keys only; 1, every row at
    columns ``[start, start + W)``; 2, each new (row, head, position) vector at its flat ``index``
    among the ``S * K * C`` vectors. Modes 1 and 2 attend to columns ``[0, key_end)``.
    """
    W, D = k_SKWD.shape[2], k_SKWD.shape[3]
    if mode == 0:
        key_cache[index, :, :W] = k_SKWD
        value_cache[index, :, :W] = v_SKWD
        return k_SKWD, v_SKWD
    if mode == 1:
        key_cache[:, :, start : start + W] = k_SKWD
        value_cache[:, :, start : start + W] = v_SKWD
    else:
        key_cache.view(-1, D).index_copy_(0, index, k_SKWD.reshape(-1, D))
        value_cache.view(-1, D).index_copy_(0, index, v_SKWD.reshape(-1, D))
    return key_cache[:, :, :key_end], value_cache[:, :, :key_end]


def decode_layers(
    ids_SW: Tensor,
    pos_SW: Tensor,
    valid_SW: Tensor | None,
    mask: Tensor,
    keep: int,
    embed: Tensor,
    cos_PD: Tensor,
    sin_signed_PD: Tensor,
    input_norm: list[Tensor],
    qkv: list[Tensor],
    qkv_bias: list[Tensor | None],
    qk_norm: list[Tensor | None],
    o: list[Tensor],
    o_bias: list[Tensor | None],
    post_norm: list[Tensor],
    gate_up: list[Tensor],
    gate_up_bias: list[Tensor | None],
    down: list[Tensor],
    down_bias: list[Tensor | None],
    final_norm: Tensor,
    head: Tensor,
    head_bias: Tensor | None,
    keys: list[Tensor],
    values: list[Tensor],
    write_mode: int,
    write_index: Tensor,
    write_start: int,
    key_end: int,
    H: int,
    K: int,
    D: int,
    eps: float,
    scaling: float,
    activation: int,
) -> Tensor:
    """Logits ``(S, keep, V)`` of the last ``keep`` positions of each row: a decoder stack over a KV cache.

    Args:
        ids_SW, pos_SW: token ids and RoPE positions, ``S`` rows of ``W`` positions.
        valid_SW: False at padding positions (None: none are). Per-position work skips them; their
            keys and values are zeros and no query may attend to them; their logits, where kept, are
            those of a zero state.
        mask: ``(S, 1, W, T)`` over the keys attended to: boolean (True = attend) or additive float.
        cos_PD, sin_signed_PD: rotary tables, ``[-sin, sin]`` halves for the second.
        input_norm ... down_bias: per layer: norms ``(hidden,)``, ``qkv`` ``((H + 2K) * D, hidden)``,
            ``qk_norm`` ``(H + K, D)`` (Qwen3) or None, ``o``, ``gate_up`` ``(2I, hidden)``, ``down``.
        keys, values: per layer ``(S, K, C, D)`` caches.
        write_mode, write_index, write_start, key_end: the cache's write plan (see :func:`write_kv`).
        H, K, D: query heads, key-value heads, head size. activation: 0 silu, 1 gelu, 2 relu.
    """
    S, W = ids_SW.shape[0], ids_SW.shape[1]
    packed: Tensor | None = None  # flat indices (into S * W) of the valid positions; None: all
    if valid_SW is not None:
        if not bool(valid_SW.all()):
            packed = valid_SW.reshape(-1).nonzero().squeeze(-1)
    ids_N, pos_N = ids_SW.reshape(-1), pos_SW.reshape(-1)
    if packed is not None:
        ids_N, pos_N = ids_N[packed], pos_N[packed]
    x = F.embedding(ids_N, embed)  # (N, hidden)
    cos, sin = cos_PD[pos_N].unsqueeze(1), sin_signed_PD[pos_N].unsqueeze(1)  # (N, 1, D)
    last = len(qkv) - 1
    for i in range(len(qkv)):
        h = _rms_norm(x, input_norm[i], eps)
        qkv_N = F.linear(h, qkv[i], qkv_bias[i]).view(-1, H + 2 * K, D)
        qk, v = qkv_N[:, : H + K], qkv_N[:, H + K :]
        norm = qk_norm[i]
        if norm is not None:  # Qwen3: RMSNorm over each query and key head
            qk = _rms_norm(qk, norm, eps)
        qk = qk * cos + torch.roll(qk, D // 2, -1) * sin  # == q * cos + rotate_half(q) * sin
        flat = torch.cat([qk, v], 1).view(-1, (H + 2 * K) * D)
        if packed is not None:  # back to the padded layout, zeros at padding
            full = flat.new_zeros((S * W, flat.shape[-1]))
            full[packed] = flat
            flat = full
        qkv_SW = flat.view(S, W, H + 2 * K, D)
        q = qkv_SW[:, :, :H].transpose(1, 2)  # (S, H, W, D)
        k, v = qkv_SW[:, :, H : H + K].transpose(1, 2), qkv_SW[:, :, H + K :].transpose(1, 2)
        k, v = write_kv(keys[i], values[i], k, v, write_mode, write_index, write_start, key_end)
        m = mask
        if i == last and keep < W:  # the other positions' keys are stored: only the kept ones go on
            q, m = q[:, :, W - keep :], mask[:, :, W - keep :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scaling, enable_gqa=H != K)
        a = a.transpose(1, 2).reshape(-1, H * D)
        if i == last:
            if packed is not None:
                full = x.new_zeros((S * W, x.shape[-1]))
                full[packed] = x
                x = full
            x = x.view(S, W, -1)[:, W - keep :].reshape(S * keep, -1)
        elif packed is not None:
            a = a[packed]
        x = x + F.linear(a, o[i], o_bias[i])
        gu = F.linear(_rms_norm(x, post_norm[i], eps), gate_up[i], gate_up_bias[i])
        half = gu.shape[-1] // 2
        gate, up = gu[:, :half], gu[:, half:]
        if activation == 0:
            gate = F.silu(gate)
        elif activation == 1:
            gate = F.gelu(gate)
        else:
            gate = F.relu(gate)
        x = x + F.linear(gate * up, down[i], down_bias[i])
    x = _rms_norm(x, final_norm, eps)
    return F.linear(x, head, head_bias).view(S, keep, -1)


@dataclass
class _Weights:
    """Per-layer weight lists as :func:`decode_layers` takes them: the model's own tensors, and
    concatenations of them (``qkv``, ``gate_up``, ``qk_norm``) made by :meth:`DecodeForward.bind`."""

    input_norm: list[Tensor]
    qkv: list[Tensor]
    qkv_bias: list[Tensor | None]
    qk_norm: list[Tensor | None]
    o: list[Tensor]
    o_bias: list[Tensor | None]
    post_norm: list[Tensor]
    gate_up: list[Tensor]
    gate_up_bias: list[Tensor | None]
    down: list[Tensor]
    down_bias: list[Tensor | None]


def _cat(*tensors: Tensor | None) -> Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors, 0)


_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its DecodeForward


class DecodeForward:
    """Logits of a Qwen3 or Llama causal LM for a decode step, from the model's own parameters.

    Args:
        model: a ``Qwen3ForCausalLM`` or ``LlamaForCausalLM`` (check :func:`fused_forward_unsupported`).
    """

    def __init__(self, model):
        cfg = model.config
        self.model = model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.eps = cfg.rms_norm_eps
        self.activation = _ACTIVATIONS.index(cfg.hidden_act)
        self.weights: _Weights | None = None
        self._weights_key = None
        self._cos_PD = self._sin_signed_PD = None
        self._layers_fn = script_or_eager(decode_layers)

    @classmethod
    def for_model(cls, model) -> DecodeForward:
        """The model's one DecodeForward: samplers made per call (evaluation makes one per batch) share
        its concatenated weights and rotary tables instead of rebuilding them."""
        if model not in _FORWARDS:
            _FORWARDS[model] = cls(model)
        return _FORWARDS[model]

    def _copied_parameters(self) -> list[Tensor]:
        """The parameters the concatenations copy: when any of them changes, :meth:`bind` rebuilds."""
        out = []
        for L in self.model.model.layers:
            a, m = L.self_attn, L.mlp
            mods = [a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj]
            out += [t for mod in mods for t in (mod.weight, mod.bias) if t is not None]
            out += [n.weight for n in (getattr(a, "q_norm", None), getattr(a, "k_norm", None)) if n is not None]
        return out

    @torch.no_grad()
    def bind(self) -> DecodeForward:
        """Make the concatenated weights match the model's parameters now; returns self.

        Cheap when nothing changed (a version check per parameter); after an optimiser step it copies
        the projection weights once.
        """
        key = [(p.data_ptr(), p._version, p.dtype) for p in self._copied_parameters()]
        if key == self._weights_key:
            return self
        H, K = self.heads, self.kv_heads
        w = _Weights([], [], [], [], [], [], [], [], [], [], [])
        for L in self.model.model.layers:
            a, m = L.self_attn, L.mlp
            q_norm, k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
            w.input_norm.append(L.input_layernorm.weight)
            w.qkv.append(_cat(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight))
            w.qkv_bias.append(_cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias))
            w.qk_norm.append(
                None if q_norm is None else torch.cat([q_norm.weight.expand(H, -1), k_norm.weight.expand(K, -1)], 0)
            )
            w.o.append(a.o_proj.weight)
            w.o_bias.append(a.o_proj.bias)
            w.post_norm.append(L.post_attention_layernorm.weight)
            w.gate_up.append(_cat(m.gate_proj.weight, m.up_proj.weight))
            w.gate_up_bias.append(_cat(m.gate_proj.bias, m.up_proj.bias))
            w.down.append(m.down_proj.weight)
            w.down_bias.append(m.down_proj.bias)
        self.weights, self._weights_key = w, key
        return self

    def _rope_tables(self, positions: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """cos and ``[-sin, sin]`` for positions ``[0, positions)``, ``(P, D)``, built by the model's rotary module."""
        if self._cos_PD is None or self._cos_PD.shape[0] < positions or self._cos_PD.dtype != like.dtype:
            n = max(positions, 2 * (0 if self._cos_PD is None else self._cos_PD.shape[0]), 256)
            cos, sin = self.model.model.rotary_emb(like, torch.arange(n, device=like.device)[None])
            half = self.head_dim // 2
            self._cos_PD = cos[0]
            self._sin_signed_PD = torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)
        return self._cos_PD, self._sin_signed_PD

    def __call__(
        self,
        ids_SW: Tensor,
        mask: Tensor,
        position_ids_SW: Tensor,
        cache,
        keep: int,
        valid_SW: Tensor | None = None,
    ) -> Tensor:
        """Logits ``(S, keep, V)`` of the last ``keep`` positions of each row of ``ids_SW``.

        Args:
            ids_SW: token ids, ``S`` rows of ``W`` positions.
            mask: ``(S, 1, W, T)`` over the keys the cache returns: boolean (True = attend) or additive float.
            position_ids_SW: RoPE positions.
            cache: a :class:`~opdlm.sampling.row_cache.RowKVCache` prepared for this forward.
            keep: how many trailing positions get logits.
            valid_SW: False at padding positions (None: none are); see :func:`decode_layers`.
        """
        w = self.weights if self.weights is not None else self.bind().weights
        core, head = self.model.model, self.model.lm_head
        embed = core.embed_tokens.weight
        cache.allocate(len(w.qkv), self.kv_heads, self.head_dim, embed.dtype)
        mode, index, start, key_end = cache.write_plan()
        cos, sin = self._rope_tables(int(position_ids_SW.max()) + 1, embed)
        return self._layers_fn(
            ids_SW, position_ids_SW, valid_SW, mask, keep, embed, cos, sin,
            w.input_norm, w.qkv, w.qkv_bias, w.qk_norm, w.o, w.o_bias, w.post_norm, w.gate_up, w.gate_up_bias,
            w.down, w.down_bias, core.norm.weight, head.weight, getattr(head, "bias", None),
            cache.keys, cache.values, mode, index, start, key_end,
            self.heads, self.kv_heads, self.head_dim, self.eps, self.scaling, self.activation,
        )  # fmt: skip
