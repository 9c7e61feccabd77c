"""Block-causal attention geometry shared by training and inference (METHOD §2, §4.4).

Every token of a batch row gets three labels:

* ``kind``:  0 = prompt, 1 = clean response (committed, or the block being denoised at inference),
  2 = noisy response (the training copy of METHOD §4.4);
* ``block``: response position ``r`` gets ``r // block_size``, counted from the response start.
  Prompt tokens get negative ids that depend on the converted model's ``prompt_attention``
  (METHOD §2): ``block`` (the paper's) counts B-blocks backwards from the response start, so a
  prompt token at offset ``o = t - prompt_width`` (-1 for the last) is in block ``floor(o / B)`` and
  sees its whole block bidirectionally (the earliest block may be partial; padding is never
  attended); ``causal`` gives every prompt token its own id ``o``, i.e. a plain causal prompt.
  With B = 1 both modes are the same;
* ``valid``: False on left padding of the prompt.

One elementwise rule (:func:`allowed_rule`) turns labels into "query may attend to key". It is
written with elementwise tensor ops only, so the same function builds dense masks (broadcasting)
and FlexAttention block masks (as a ``mask_mod``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROMPT, CLEAN, NOISY = 0, 1, 2
# How the prompt attends to itself (a converted model's ``prompt_attention`` in config.json).
PROMPT_ATTENTION_MODES = ("block", "causal")
# What a config.json without the key means: students converted before the key existed were causal.
LEGACY_PROMPT_ATTENTION = "causal"


def check_prompt_attention(mode: str) -> str:
    """``mode`` when it is one of :data:`PROMPT_ATTENTION_MODES`, else ValueError naming the choices."""
    if mode not in PROMPT_ATTENTION_MODES:
        raise ValueError(f"prompt_attention must be one of {', '.join(PROMPT_ATTENTION_MODES)} (got {mode!r})")
    return mode


def allowed_rule(kq, bq, vq, iq, kk, bk, vk, ik):
    """Whether a query (kind, block, valid, index) may attend to a key: elementwise on tensors.

    * prompt keys: visible to every response query; block-causal among prompt queries (which is
      plain causal when every prompt token has its own block id);
    * clean keys: block-causal for clean queries (``block_k <= block_q``); strictly earlier blocks
      for noisy queries (``block_k < block_q``);
    * noisy keys: only to noisy queries of the same block;
    * padding: never a key; a padding query sees only itself (keeps softmax finite).
    """
    prompt_key = (kk == PROMPT) & ((kq != PROMPT) | (bk <= bq))
    clean_key = (kk == CLEAN) & (((kq == CLEAN) & (bk <= bq)) | ((kq == NOISY) & (bk < bq)))
    noisy_key = (kk == NOISY) & (kq == NOISY) & (bk == bq)
    return (vk & vq & (prompt_key | clean_key | noisy_key)) | (~vq & (iq == ik))


@dataclass
class Geometry:
    """Per-token labels of a batch laid out as ``[left-padded prompt | response (| noisy response)]``.

    Attributes:
        kind_BT: token kinds (PROMPT, CLEAN, NOISY).
        block_BT: block ids (negative in the prompt; distinct per token for a causal prompt).
        valid_BT: False on padding.
        position_ids_BT: rotary positions; the prompt starts at 0 after its padding, the response
            continues from the prompt length, a noisy copy reuses the clean positions.
        prompt_width: P, the padded prompt length.
        block_size: tokens per block.
        prompt_attention: ``block`` or ``causal`` (see the module docstring).
    """

    kind_BT: torch.Tensor
    block_BT: torch.Tensor
    valid_BT: torch.Tensor
    position_ids_BT: torch.Tensor
    prompt_width: int
    block_size: int
    prompt_attention: str = LEGACY_PROMPT_ATTENTION

    @property
    def length(self) -> int:
        return self.kind_BT.shape[1]

    def allowed(self, q_start: int = 0, q_end: int | None = None, k_end: int | None = None) -> torch.Tensor:
        """Dense boolean mask ``allowed_BQT`` for queries ``[q_start, q_end)`` and keys ``[0, k_end)``."""
        q_end = self.length if q_end is None else q_end
        k_end = q_end if k_end is None else k_end
        q = slice(q_start, q_end)
        k = slice(0, k_end)
        iq = torch.arange(q_start, q_end, device=self.kind_BT.device)[None, :, None]
        ik = torch.arange(0, k_end, device=self.kind_BT.device)[None, None, :]
        return allowed_rule(
            self.kind_BT[:, q, None],
            self.block_BT[:, q, None],
            self.valid_BT[:, q, None],
            iq,
            self.kind_BT[:, None, k],
            self.block_BT[:, None, k],
            self.valid_BT[:, None, k],
            ik,
        )

    def select(self, rows: torch.Tensor) -> Geometry:
        """The geometry of a subset of batch rows (finished sequences leave the batch)."""
        return Geometry(
            self.kind_BT[rows],
            self.block_BT[rows],
            self.valid_BT[rows],
            self.position_ids_BT[rows],
            self.prompt_width,
            self.block_size,
            self.prompt_attention,
        )


def prompt_block_ids(prompt_width: int, block_size: int, prompt_attention: str, device=None) -> torch.Tensor:
    """Block id of each prompt slot ``t`` of a right-aligned prompt, shape ``(P,)`` (all negative).

    ``block``: ``floor((t - P) / B)``, i.e. B-blocks counted backwards from the response start
    (the last B prompt tokens are block -1). ``causal``: ``t - P``, a block of its own per token.
    """
    offset = torch.arange(prompt_width, device=device) - prompt_width
    if check_prompt_attention(prompt_attention) == "causal":
        return offset
    return torch.div(offset, block_size, rounding_mode="floor")


def _prompt_labels(prompt_lens_B: torch.Tensor, prompt_width: int, block_size: int, prompt_attention: str):
    """Labels of a left-padded prompt region: (kind, block, valid, position), each ``(B, P)``."""
    device = prompt_lens_B.device
    t = torch.arange(prompt_width, device=device)[None, :]
    pad_B1 = (prompt_width - prompt_lens_B)[:, None]
    valid = t >= pad_B1
    block = prompt_block_ids(prompt_width, block_size, prompt_attention, device)[None, :].expand(len(prompt_lens_B), -1)
    kind = torch.full_like(block, PROMPT)
    pos = torch.where(valid, t - pad_B1, torch.zeros_like(t))
    return kind, block, valid, pos


def inference_geometry(
    prompt_lens_B: torch.Tensor,
    prompt_width: int,
    response_len: int,
    block_size: int,
    prompt_attention: str = LEGACY_PROMPT_ATTENTION,
) -> Geometry:
    """Geometry of ``[left-padded prompt | response]`` used by the sampler.

    Args:
        prompt_lens_B: true prompt lengths, each ``<= prompt_width``.
        prompt_width: P, the padded prompt length.
        response_len: L, response positions to lay out (a multiple of ``block_size`` in practice).
        block_size: tokens per block.
        prompt_attention: the converted model's ``block`` or ``causal`` (``StudentMeta.prompt_attention``).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if int(prompt_lens_B.max()) > prompt_width:
        raise ValueError("a prompt is longer than prompt_width")
    kind_p, block_p, valid_p, pos_p = _prompt_labels(prompt_lens_B, prompt_width, block_size, prompt_attention)
    n = len(prompt_lens_B)
    r = torch.arange(response_len, device=prompt_lens_B.device)[None, :].expand(n, -1)
    kind_r = torch.full_like(r, CLEAN)
    block_r = r // block_size
    valid_r = torch.ones_like(r, dtype=torch.bool)
    pos_r = prompt_lens_B[:, None] + r
    return Geometry(
        torch.cat([kind_p, kind_r], 1),
        torch.cat([block_p, block_r], 1),
        torch.cat([valid_p, valid_r], 1),
        torch.cat([pos_p, pos_r], 1),
        prompt_width,
        block_size,
        prompt_attention,
    )


def training_geometry(
    prompt_lens_B: torch.Tensor,
    prompt_width: int,
    response_len: int,
    block_size: int,
    prompt_attention: str = LEGACY_PROMPT_ATTENTION,
) -> Geometry:
    """Geometry of the training layout ``[prompt | clean response | noisy response]`` (METHOD §4.4).

    Noisy block b sees the prompt, clean blocks before b and itself; the clean copy is
    block-causal and never sees the noisy copy; the noisy copy reuses the clean position ids.
    The prompt is laid out exactly as at inference (``prompt_attention``). Total length ``P + 2L``.
    """
    inf = inference_geometry(prompt_lens_B, prompt_width, response_len, block_size, prompt_attention)
    resp = slice(prompt_width, prompt_width + response_len)
    kind_n = torch.full_like(inf.kind_BT[:, resp], NOISY)
    return Geometry(
        torch.cat([inf.kind_BT, kind_n], 1),
        torch.cat([inf.block_BT, inf.block_BT[:, resp]], 1),
        torch.cat([inf.valid_BT, inf.valid_BT[:, resp]], 1),
        torch.cat([inf.position_ids_BT, inf.position_ids_BT[:, resp]], 1),
        prompt_width,
        block_size,
        prompt_attention,
    )


def prediction_rows(
    prompt_width: int, response_len: int, block_size: int, logit_shift: bool, noisy: bool
) -> torch.Tensor:
    """Which sequence index's output predicts each response position ``r`` (shape ``(L,)``).

    Without shift the output at ``r`` predicts token ``r``. With ``logit_shift`` the output at
    ``r - 1`` predicts ``r``; for the first position of a block that is the last token of the
    previous block (its clean copy in the training layout) or, for ``r = 0``, the last prompt token.

    Args:
        noisy: rows index the noisy copy of the training layout (starting at ``P + L``) instead of
            the single response of the inference layout (starting at ``P``).
    """
    r = torch.arange(response_len)
    start = prompt_width + (response_len if noisy else 0)
    if not logit_shift:
        return start + r
    within = r % block_size != 0
    # previous token of the same block: in the same copy; block boundary: the clean copy (or prompt).
    return torch.where(within, start + r - 1, prompt_width + r - 1)
