"""One switch from a block-causal :class:`~opdlm.models.geometry.Geometry` to each backend's mask.

* ``sdpa``: boolean ``(B, 1, Q, K)`` mask, True = attend.
* ``eager``: additive float mask (0 or dtype min). A boolean mask under eager is added as 0/1 and
  masks nothing, which is silently wrong, so eager never gets one.
* ``flex_attention`` (GPU): a FlexAttention ``BlockMask`` built from the same elementwise rule;
  a dense 4-D tensor is never handed to flex (it crashed on CPU).
"""

from __future__ import annotations

import torch

from opdlm.models.geometry import Geometry, allowed_rule

BACKENDS = ("sdpa", "eager", "flex_attention")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        from opdlm.errors import OpdlmError

        raise OpdlmError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}")
    return backend


def default_backend(device: torch.device | str) -> str:
    """FlexAttention on CUDA, SDPA elsewhere."""
    return "flex_attention" if torch.device(device).type == "cuda" else "sdpa"


def dense_to_backend(allowed_BQK: torch.Tensor, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean ``(B, Q, K)`` mask into the 4-D mask ``backend`` expects."""
    mask = allowed_BQK[:, None]
    if backend == "sdpa":
        return mask
    if backend == "eager":
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    raise ValueError(f"dense masks are for sdpa and eager, not {backend!r}")


def flex_block_mask(geom: Geometry, q_start: int, q_end: int, k_end: int):
    """A FlexAttention ``BlockMask`` for queries ``[q_start, q_end)`` and keys ``[0, k_end)``."""
    from torch.nn.attention.flex_attention import create_block_mask

    kind, block, valid = geom.kind_BT, geom.block_BT, geom.valid_BT

    def mask_mod(b, h, q_idx, kv_idx):
        q = q_idx + q_start
        return allowed_rule(kind[b, q], block[b, q], valid[b, q], q, kind[b, kv_idx], block[b, kv_idx], valid[b, kv_idx], kv_idx)

    return create_block_mask(
        mask_mod, B=kind.shape[0], H=None, Q_LEN=q_end - q_start, KV_LEN=k_end, device=kind.device
    )


def attention_mask(
    geom: Geometry, backend: str, dtype: torch.dtype, q_start: int = 0, q_end: int | None = None, k_end: int | None = None
):
    """The mask for queries ``[q_start, q_end)`` against keys ``[0, k_end)`` in ``backend``'s format."""
    q_end = geom.length if q_end is None else q_end
    k_end = q_end if k_end is None else k_end
    if backend == "flex_attention":
        return flex_block_mask(geom, q_start, q_end, k_end)
    return dense_to_backend(geom.allowed(q_start, q_end, k_end), backend, dtype)
