"""Training FLOPs of a Qwen3-architecture model, counted from what each step actually ran.

**Formula.** A forward over ``T`` tokens, ``A`` attended (query, key) pairs and ``H_t`` tokens that go
through the output head costs

    F_fwd = 2 N_mm T  +  4 n_layers n_heads d_head A  +  2 d_model V H_t

* ``N_mm``: the decoder's matrix-multiply weights (q, k, v, o projections and the three MLP
  matrices of every layer; norms, biases and the embedding lookup are elementwise and left out);
  each weight costs a multiply and an add per token;
* attention: ``Q K^T`` and ``softmax(.) V`` each cost ``2 d_head`` per head, per layer and per
  attended pair (pairs the mask forbids are not counted, i.e. model FLOPs, not what a dense kernel
  wastes on them);
* the output head (``d_model x V``) runs only where logits are used: the loss positions in training,
  ``B`` (or ``B + 1`` with ``logit_shift``) positions per sampler forward.

A backward costs ``2 F_fwd`` (gradients with respect to activations and to weights); a training
step of the student is ``3 F_fwd``. These are *model* FLOPs: gradient checkpointing's recomputation
and padding are not counted, so two runs compare by the work their method needs. Every count uses
each row's real tokens (its own prompt and response length), not the padded batch.

**Per training step** (:func:`rollout_flops`, :func:`teacher_read_flops`, :func:`student_train_flops`):

* rollout: every sampler forward of every rollout, reconstructed from its ``step_map`` and its
  forward count: block ``b``'s first forward runs the prompt (block 0) or the previous block
  (committing it to the KV cache) plus the current block, the others the current block alone;
* teacher: its causal read over ``prompt + response`` with the head at the loss positions, plus for
  ``target: future_aware`` the candidate pass (head at the loss positions again) and the rescoring
  forwards (:class:`opdlm.train.future_aware.BranchWork`, counted from their layouts);
* student: forward and backward over ``[prompt | clean | noisy]`` with the head at the loss positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen3-architecture decoder that its FLOPs and parameters depend on."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_ff: int
    vocab: int
    tied: bool = True
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """From a Hugging Face config (``Qwen3Config`` or any with the same field names)."""
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            d_model=cfg.hidden_size,
            n_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            n_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            d_head=d_head,
            d_ff=cfg.intermediate_size,
            vocab=cfg.vocab_size,
            tied=bool(getattr(cfg, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(cfg, "attention_bias", False)),
        )

    @property
    def layer_matmul_params(self) -> int:
        """q, k, v, o projections and gate, up, down of one layer."""
        h, q, kv = self.d_model, self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        return h * q + 2 * h * kv + q * h + 3 * h * self.d_ff

    @property
    def matmul_params(self) -> int:
        """``N_mm``: the decoder's matrix-multiply weights (all layers)."""
        return self.n_layers * self.layer_matmul_params

    def param_counts(self) -> dict[str, int]:
        """Every parameter of ``Qwen3ForCausalLM`` by group (their sum is ``sum(p.numel())``)."""
        h, q, kv = self.d_model, self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        # two RMSNorms of width d_model and Qwen3's per-head q/k norms of width d_head, per layer
        other = 2 * h + 2 * self.d_head + ((q + 2 * kv + h) if self.attention_bias else 0)
        return {
            "embedding": self.vocab * h,
            "layers_matmul": self.matmul_params,
            "layers_other": self.n_layers * other,
            "final_norm": h,
            "head": 0 if self.tied else self.vocab * h,
        }

    @property
    def num_params(self) -> int:
        return sum(self.param_counts().values())


def forward_flops(shape: ModelShape, tokens: int, attended_pairs: int, head_tokens: int) -> float:
    """``F_fwd`` of the module docstring."""
    return float(
        2 * shape.matmul_params * tokens
        + 4 * shape.n_layers * shape.n_heads * shape.d_head * attended_pairs
        + 2 * shape.d_model * shape.vocab * head_tokens
    )


def causal_pairs(n: int) -> int:
    """Attended pairs of a causal forward over ``n`` tokens."""
    return n * (n + 1) // 2


def block_pairs(sizes: list[int], keys_before: int = 0) -> int:
    """Pairs of consecutive blocks that attend bidirectionally inside and causally across, after
    ``keys_before`` keys every query also sees."""
    total, seen = 0, keys_before
    for size in sizes:
        seen += size
        total += size * seen
    return total


def block_sizes(n: int, block_size: int) -> list[int]:
    """Sizes of the response blocks of ``n`` tokens counted from the start (the last one may be partial)."""
    return [min(block_size, n - s) for s in range(0, n, block_size)]


def prompt_pairs(prompt_len: int, block_size: int, prompt_attention: str) -> int:
    """Pairs inside the prompt: causal, or B-blocks counted backwards from the response start (METHOD §2)."""
    if prompt_attention == "causal" or block_size == 1:
        return causal_pairs(prompt_len)
    first = prompt_len % block_size
    return block_pairs(([first] if first else []) + [block_size] * (prompt_len // block_size))


def teacher_read_flops(shape: ModelShape, prompt_lens: list[int], lengths: list[int], head_tokens: int) -> float:
    """The teacher's causal forward over each row's ``prompt + response``, head at ``head_tokens`` positions."""
    tokens = sum(p + n for p, n in zip(prompt_lens, lengths))
    pairs = sum(causal_pairs(p + n) for p, n in zip(prompt_lens, lengths))
    return forward_flops(shape, tokens, pairs, head_tokens)


def student_train_pairs(prompt_len: int, length: int, block_size: int, prompt_attention: str) -> int:
    """Attended pairs of one row's ``[prompt | clean | noisy]`` training forward (METHOD §4.4)."""
    sizes = block_sizes(length, block_size)
    clean = block_pairs(sizes, prompt_len)
    noisy = sum(size * (prompt_len + b * block_size + size) for b, size in enumerate(sizes))
    return prompt_pairs(prompt_len, block_size, prompt_attention) + clean + noisy


def student_train_flops(
    shape: ModelShape,
    prompt_lens: list[int],
    lengths: list[int],
    head_tokens: int,
    block_size: int,
    prompt_attention: str,
) -> float:
    """Forward + backward (``3 F_fwd``) of the student's training forward, head at ``head_tokens`` positions."""
    tokens = sum(p + 2 * n for p, n in zip(prompt_lens, lengths))
    pairs = sum(student_train_pairs(p, n, block_size, prompt_attention) for p, n in zip(prompt_lens, lengths))
    return 3.0 * forward_flops(shape, tokens, pairs, head_tokens)


def forwards_per_block(step_map: list[int], length: int, num_forwards: int, block_size: int) -> list[int]:
    """Sampler forwards spent on each response block of one rollout.

    Every sampler forward commits at least one token of the block it works on, so a block's forwards
    are its distinct committing rounds in ``step_map``; rounds whose tokens were dropped after an EOS
    are the difference to ``num_forwards``, spent on the last block.
    """
    counts = [len(set(step_map[s : s + block_size])) for s in range(0, length, block_size)]
    if counts:
        counts[-1] += max(num_forwards - sum(counts), 0)
    elif num_forwards:
        counts = [num_forwards]
    return counts


def rollout_flops(
    shape: ModelShape,
    prompt_lens: list[int],
    step_maps: list[list[int]],
    lengths: list[int],
    num_forwards: list[int],
    block_size: int,
    prompt_attention: str,
    logit_shift: bool,
) -> float:
    """Every sampler forward of a batch of rollouts (see the module docstring)."""
    B = block_size
    tokens = pairs = head = 0
    for p, steps, n, nfe in zip(prompt_lens, step_maps, lengths, num_forwards):
        for b, f in enumerate(forwards_per_block(steps, n, nfe, B)):
            if f == 0:
                continue
            prefix = p + b * B  # keys before the current block
            # the current block, every forward: B queries seeing the prefix and the whole block
            tokens += f * B
            pairs += f * B * (prefix + B)
            head += f * B + (1 if logit_shift else 0)
            # its first forward also runs the prompt (block 0) or commits the previous block
            if b == 0:
                tokens += p
                pairs += prompt_pairs(p, B, prompt_attention)
            else:
                tokens += B
                pairs += B * prefix
    return forward_flops(shape, tokens, pairs, head)


FLOPS_KEYS = ("rollout", "teacher", "student")


def summary_total_flops(value: Any) -> float:
    """Total training FLOPs from a ``train_summary.json`` ``flops`` entry (a breakdown dict, or a plain number
    in summaries written before the breakdown existed)."""
    if isinstance(value, dict):
        return float(value.get("total", sum(float(value.get(k, 0.0)) for k in FLOPS_KEYS)))
    return float(value or 0.0)
